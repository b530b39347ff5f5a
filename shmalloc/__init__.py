"""shmalloc core: the guest page allocator in shared memory."""

__version__ = "0.1.0"
