/*
 * shmguest: the workload and the sampler of shmalloc's real guest.
 *
 * Runs inside a Linux guest booted by `shmalloc vm` (launcher/vm/), started
 * by the initramfs's /init once virtio_balloon is loaded and the report
 * order is set.  It runs one of the model's workloads (shmalloc/workload.py)
 * as user-space processes, samples the guest, and sends everything to the
 * host as text lines on the second serial port (/dev/ttyS1), each stamped
 * with the guest's CLOCK_MONOTONIC so the host can align them with its own
 * samples.
 *
 * Workloads, with the model's names and meanings.  A user program cannot
 * ask the buddy allocator for an order: a "block of order n" here is an
 * anonymous mapping of 2^n pages, each page written once (one page fault,
 * an order-0 allocation, unless thp=1 lets order >= 9 regions fault as a
 * transparent huge page), freed by munmap.
 *   hog          each of `workers` processes maps hog_share * memory / workers,
 *                writes every page, holds it hold_ms, unmaps it, stays idle
 *   page_fault1  map working_set, write every page, unmap; repeat
 *   thp          the same, 2 MiB-aligned with MADV_HUGEPAGE
 *   random       the model's seeded mix of orders and lifetimes around a
 *                per-worker target working set (the model's numpy generator
 *                is replaced by xorshift64*: the same distribution, not the
 *                same sequence)
 *   phased       random for 40 % of the run, free everything, idle until
 *                70 %, random again (seed + 1)
 * Every page written carries a canary (worker, generation, page) in its
 * first 8 bytes, checked before the unmap: a zero is a page the host
 * discarded while the guest owned it (use-after-discard).
 *
 * Lines sent to the host (key=value after a one-letter tag; t= is the
 * guest's CLOCK_MONOTONIC in ns):
 *   H  hello: kernel release, effective report order, MemTotal, cpus, THP,
 *      min_free_kbytes (khugepaged raises it when THP is on; the per-cpu
 *      lists' high mark follows the low watermark)
 *   W  waiting for the start state (--start idle)
 *   S  the workload starts (the run's time 0)
 *   G  every sample_ms: MemFree, /proc/buddyinfo's free blocks per order,
 *      the pages on the per-cpu lists (/proc/zoneinfo), and the workers'
 *      page faults so far (minflt)
 *   P  a scan of /proc/kpageflags: free pages, Reported pages and blocks
 *   K  a kprobe event of the reporting path (the first __page_reporting_notify
 *      after a pass, page_reporting_process entry and return with the count
 *      of notifies, virtballoon_free_page_report entry and return)
 *   E  a workload event of one worker (touched, freeing, freed, end)
 *   X  the end, with the workers' counters
 *   F  a fatal error (one line)
 *
 * /proc/kpageflags: KPF_BUDDY (bit 10) marks a free page, head or tail
 * (fs/proc/page.c: PageBuddy(page), or page_count(page) == 0 &&
 * is_free_buddy_page(page)); KPF_UPTODATE (bit 3) copies PG_uptodate,
 * which PG_reported aliases (include/linux/page-flags.h: "PG_reported =
 * PG_uptodate", only meaningful on a buddy head; free tails have no flags).
 * A Reported head's order is not in the flags: it is the largest order
 * whose aligned range is wholly free (a free buddy of the same order would
 * have merged), and at least the report order.
 *
 *   shmguest --check key=value...   validate a configuration (exit 0 or 2)
 *   shmguest --workloads            the workloads this program knows
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define MAX_ORDER 11
#define MAX_WORKERS 64
#define KPF_UPTODATE 3
#define KPF_BUDDY 10
#define IDLE_AFTER_MS 3000      /* reporter idle: no pass for its 2 s delay and a margin */

static const char *WORKLOADS[] = {"hog", "page_fault1", "thp", "random", "phased", NULL};

struct config {
	char workload[32];
	uint64_t memory;        /* the guest's size as the host gave it, bytes */
	int workers;
	uint64_t duration_ms;
	double hog_share;
	uint64_t hold_ms;
	uint64_t working_set;   /* bytes per worker */
	uint64_t seed;
	int thp;
	uint64_t sample_ms;
	uint64_t scan_ms;       /* 0: kpageflags only at the start and the end */
	int start_idle;
	uint64_t settle_ms;
	int report_order;
	int probe;              /* say hello and stop (shmalloc vm's KVM probe) */
};

static struct config cfg = {
	.workload = "hog", .memory = 1UL << 30, .workers = 1, .duration_ms = 15000,
	.hog_share = 0.9, .hold_ms = 1000, .working_set = 128UL << 20, .seed = 1,
	.thp = 0, .sample_ms = 100, .scan_ms = 1000, .start_idle = 1, .settle_ms = 90000,
	.report_order = 9,
};

static int out_fd = 1;

/* ------------------------------------------------------------------ */
/* output                                                              */
/* ------------------------------------------------------------------ */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000UL + ts.tv_nsec;
}

/* One line, one write(): lines from the sampler never interleave. */
static void emit(const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	for (int off = 0; off < n;) {
		ssize_t w = write(out_fd, buf + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		off += w;
	}
}

static void fatal(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	emit("F %s", buf);
	fprintf(stderr, "shmguest: %s\n", buf);
	exit(1);
}

static int open_channel(const char *path)
{
	int fd = open(path, O_WRONLY | O_NOCTTY);
	if (fd < 0)
		return -1;
	struct termios t;
	if (tcgetattr(fd, &t) == 0) {
		cfmakeraw(&t);
		cfsetospeed(&t, B115200);
		tcsetattr(fd, TCSANOW, &t);
	}
	return fd;
}

/* ------------------------------------------------------------------ */
/* configuration                                                       */
/* ------------------------------------------------------------------ */

static int known_workload(const char *w)
{
	for (int i = 0; WORKLOADS[i]; i++)
		if (!strcmp(w, WORKLOADS[i]))
			return 1;
	return 0;
}

/* Set one key; returns an error message or NULL. */
static const char *set_key(const char *key, const char *val)
{
	static char err[256];
	char *end;
	if (!strcmp(key, "workload")) {
		if (!known_workload(val)) {
			snprintf(err, sizeof(err), "unknown workload '%s'; the guest program knows "
				 "hog, page_fault1, thp, random, phased", val);
			return err;
		}
		snprintf(cfg.workload, sizeof(cfg.workload), "%s", val);
		return NULL;
	}
	if (!strcmp(key, "hog_share")) {
		cfg.hog_share = strtod(val, &end);
		if (*end || !(cfg.hog_share > 0 && cfg.hog_share <= 1))
			return "hog_share must be in (0, 1]";
		return NULL;
	}
	uint64_t v = strtoull(val, &end, 10);
	if (*end || !*val) {
		snprintf(err, sizeof(err), "%s: not a number: '%s'", key, val);
		return err;
	}
	if (!strcmp(key, "memory"))
		cfg.memory = v;
	else if (!strcmp(key, "workers")) {
		if (v < 1 || v > MAX_WORKERS)
			return "workers must be 1..64";
		cfg.workers = v;
	} else if (!strcmp(key, "duration_ms")) {
		if (v == 0)
			return "duration_ms must be > 0";
		cfg.duration_ms = v;
	} else if (!strcmp(key, "hold_ms"))
		cfg.hold_ms = v;
	else if (!strcmp(key, "working_set")) {
		if (v < PAGE || v % PAGE)
			return "working_set must be a positive multiple of 4096";
		cfg.working_set = v;
	} else if (!strcmp(key, "seed"))
		cfg.seed = v;
	else if (!strcmp(key, "thp"))
		cfg.thp = v != 0;
	else if (!strcmp(key, "sample_ms")) {
		if (v == 0)
			return "sample_ms must be > 0";
		cfg.sample_ms = v;
	} else if (!strcmp(key, "scan_ms"))
		cfg.scan_ms = v;
	else if (!strcmp(key, "start_idle"))
		cfg.start_idle = v != 0;
	else if (!strcmp(key, "settle_ms"))
		cfg.settle_ms = v;
	else if (!strcmp(key, "probe"))
		cfg.probe = v != 0;
	else if (!strcmp(key, "report_order")) {
		if (v >= MAX_ORDER)
			return "report_order must be 0..10";
		cfg.report_order = v;
	} else {
		snprintf(err, sizeof(err), "unknown key '%s'", key);
		return err;
	}
	return NULL;
}

static const char *parse_pair(char *pair)
{
	char *eq = strchr(pair, '=');
	if (!eq)
		return "expected key=value";
	*eq = 0;
	return set_key(pair, eq + 1);
}

/* The kernel command line's shmguest.KEY=VALUE words. */
static void parse_cmdline(void)
{
	char buf[4096];
	int fd = open("/proc/cmdline", O_RDONLY);
	if (fd < 0)
		fatal("cannot read /proc/cmdline: %s", strerror(errno));
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	for (char *save, *tok = strtok_r(buf, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
		if (strncmp(tok, "shmguest.", 9))
			continue;
		const char *e = parse_pair(tok + 9);
		if (e)
			fatal("bad configuration %s: %s", tok, e);
	}
}

/* ------------------------------------------------------------------ */
/* guest samples                                                       */
/* ------------------------------------------------------------------ */

static ssize_t read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, size - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	return n;
}

static long meminfo_kb(const char *key)
{
	char buf[8192];
	if (read_file("/proc/meminfo", buf, sizeof(buf)) < 0)
		return -1;
	char *p = strstr(buf, key);
	return p ? strtol(p + strlen(key) + 1, NULL, 10) : -1;
}

/* Free blocks per order, summed over zones (/proc/buddyinfo). */
static void buddyinfo(long counts[MAX_ORDER])
{
	char buf[4096];
	memset(counts, 0, sizeof(long) * MAX_ORDER);
	if (read_file("/proc/buddyinfo", buf, sizeof(buf)) < 0)
		return;
	for (char *save, *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *p = strstr(line, "zone");
		if (!p)
			continue;
		p += 4;
		while (*p == ' ')
			p++;
		while (*p && *p != ' ')   /* the zone's name */
			p++;
		for (int o = 0; o < MAX_ORDER; o++)
			counts[o] += strtol(p, &p, 10);
	}
}

/* Pages on the per-cpu lists, and their high marks, summed over zones and
 * cpus (/proc/zoneinfo's pagesets: "count:" and "high:"): free pages that
 * MemFree and buddyinfo do not show and no report can take. */
static void pcp_pages(long *count, long *high)
{
	static char buf[1 << 16];
	*count = *high = 0;
	if (read_file("/proc/zoneinfo", buf, sizeof(buf)) < 0)
		return;
	for (char *save, *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		while (*line == ' ')
			line++;
		if (!strncmp(line, "count:", 6))
			*count += strtol(line + 6, NULL, 10);
		else if (!strncmp(line, "high:", 5))
			*high += strtol(line + 5, NULL, 10);
	}
}

static pid_t worker_pids[MAX_WORKERS];
static int nr_worker_pids;
static long reaped_minflt;      /* the workers' once reaped (wait4's rusage) */

/* The page faults the workers have made so far: the sum of minflt, the 10th
 * field of /proc/PID/stat (after "pid (comm) state ppid pgrp session tty_nr
 * tpgid flags"; comm may hold spaces, so count from its closing paren).
 * With THP off each is one order-0 allocation, so the host can pace the
 * model's faults as these came (vm compare --model-rate timeline). */
static long workers_minflt(void)
{
	long sum = reaped_minflt;
	for (int i = 0; i < nr_worker_pids; i++) {
		char path[64], buf[1024];
		snprintf(path, sizeof(path), "/proc/%d/stat", (int)worker_pids[i]);
		if (read_file(path, buf, sizeof(buf)) <= 0)
			continue;
		char *p = strrchr(buf, ')');
		for (int field = 2; p && field < 10; field++)
			p = strchr(p + 1, ' ');
		if (p)
			sum += strtol(p + 1, NULL, 10);
	}
	return sum;
}

static void sample_guest(void)
{
	long c[MAX_ORDER], pcp, pcp_high;
	buddyinfo(c);
	pcp_pages(&pcp, &pcp_high);
	emit("G t=%llu memfree_kb=%ld pcp=%ld pcp_high=%ld minflt=%ld "
	     "buddy=%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld",
	     (unsigned long long)now_ns(), meminfo_kb("MemFree:"), pcp, pcp_high, workers_minflt(),
	     c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]);
}

static uint64_t *kpf;
static size_t kpf_cap;

/* One pass over /proc/kpageflags: free pages, Reported pages, Reported
 * blocks per order (see the header for how a block's order is found). */
static void scan_kpageflags(void)
{
	uint64_t t0 = now_ns();
	int fd = open("/proc/kpageflags", O_RDONLY);
	if (fd < 0) {
		emit("P t=%llu error=%d", (unsigned long long)t0, errno);
		return;
	}
	size_t n = 0;
	for (;;) {
		if (n + 65536 > kpf_cap) {
			kpf_cap = kpf_cap ? kpf_cap * 2 : 1 << 20;
			kpf = realloc(kpf, kpf_cap * sizeof(*kpf));
			if (!kpf)
				fatal("out of memory for kpageflags");
		}
		ssize_t r = pread(fd, kpf + n, 65536 * sizeof(*kpf), n * sizeof(*kpf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += r / sizeof(*kpf);
	}
	close(fd);
	const uint64_t buddy = 1UL << KPF_BUDDY, reported = buddy | 1UL << KPF_UPTODATE;
	uint64_t free_pages = 0, rep_pages = 0;
	long blocks[MAX_ORDER] = {0};
	for (size_t pfn = 0; pfn < n; pfn++) {
		if (kpf[pfn] & buddy)
			free_pages++;
		if ((kpf[pfn] & reported) != reported)
			continue;
		int o = 0;
		while (o + 1 < MAX_ORDER && !(pfn & ((2UL << o) - 1)) && pfn + (2UL << o) <= n) {
			size_t i, lo = pfn + (1UL << o), hi = pfn + (2UL << o);
			for (i = lo; i < hi; i++)
				if ((kpf[i] & reported) != buddy)   /* not free, or another head */
					break;
			if (i < hi)
				break;
			o++;
		}
		/* the lower half of our own block may hold nothing but tails */
		blocks[o]++;
		rep_pages += 1UL << o;
	}
	uint64_t t1 = now_ns();
	emit("P t=%llu dur_ns=%llu pfns=%zu free_pages=%llu reported_pages=%llu "
	     "reported_blocks=%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld,%ld",
	     (unsigned long long)t0, (unsigned long long)(t1 - t0), n,
	     (unsigned long long)free_pages, (unsigned long long)rep_pages, blocks[0], blocks[1],
	     blocks[2], blocks[3], blocks[4], blocks[5], blocks[6], blocks[7], blocks[8],
	     blocks[9], blocks[10]);
}

/* ------------------------------------------------------------------ */
/* the reporting path's kprobe events (set up by /init)                */
/* ------------------------------------------------------------------ */

static int trace_fd = -1;
static char trace_buf[65536];
static size_t trace_len;
static uint64_t last_pass_end_ns, passes_seen, pass_running;
static uint64_t notifies;       /* __page_reporting_notify calls since the last pass ended */

/* "  kworker/0:1-35  [000] d..1.  12.345678: pstart: (page_reporting_process+0x0/...) a=1"
 * -> "K ts=12.345678 ev=pstart a=1"; remembers when the last pass ended.
 * Of the free path's requests (notify) only the first after a pass ended
 * (or the first ever) is sent, the one that may move IDLE to REQUESTED; a
 * pass's end says how many there were since the previous one. */
static void trace_line(char *line)
{
	char *colon = strstr(line, ": ");
	if (!colon)
		return;
	char *ts = colon;
	while (ts > line && ts[-1] != ' ')
		ts--;
	*colon = 0;
	char *ev = colon + 2, *evend = strstr(ev, ": ");
	if (!evend)
		return;
	*evend = 0;
	char *args = strchr(evend + 2, ')');
	args = args ? args + 1 : evend + 2;
	while (*args == ' ')
		args++;
	if (!strcmp(ev, "notify") && notifies++)
		return;
	if (!strcmp(ev, "pend")) {
		emit("K ts=%s ev=%s notifies=%llu", ts, ev, (unsigned long long)notifies);
		notifies = 0;
	} else {
		emit("K ts=%s ev=%s %s", ts, ev, args);
	}
	if (!strcmp(ev, "pstart")) {
		pass_running = 1;
		passes_seen++;
	} else if (!strcmp(ev, "pend")) {
		pass_running = 0;
		last_pass_end_ns = now_ns();
	}
}

static void drain_trace(void)
{
	if (trace_fd < 0)
		return;
	for (;;) {
		ssize_t r = read(trace_fd, trace_buf + trace_len, sizeof(trace_buf) - 1 - trace_len);
		if (r <= 0)
			return;     /* EAGAIN: nothing more now */
		trace_len += r;
		trace_buf[trace_len] = 0;
		char *start = trace_buf, *nl;
		while ((nl = strchr(start, '\n'))) {
			*nl = 0;
			trace_line(start);
			start = nl + 1;
		}
		trace_len = trace_buf + trace_len - start;
		memmove(trace_buf, start, trace_len);
		if (trace_len == sizeof(trace_buf) - 1)
			trace_len = 0;      /* a line longer than the buffer: drop it */
	}
}

/* ------------------------------------------------------------------ */
/* workloads (in worker processes)                                     */
/* ------------------------------------------------------------------ */

struct event {
	int worker;
	int kind;
	uint64_t t;
	uint64_t value;
};

enum { EV_TOUCHED, EV_FREEING, EV_FREED, EV_END, EV_BAD_CANARY, EV_ZERO_CANARY, EV_MAP_FAILED,
       EV_CAPPED };
static const char *EV_NAMES[] = {"touched", "freeing", "freed", "end", "bad_canary",
				 "zero_canary", "map_failed", "capped"};

static int ev_pipe[2];
static int me;
static uint64_t gen;

static void event(int kind, uint64_t value)
{
	struct event e = {me, kind, now_ns(), value};
	if (write(ev_pipe[1], &e, sizeof(e)) != sizeof(e))
		_exit(3);
}

static uint64_t canary(uint64_t g, uint64_t page)
{
	return ((uint64_t)(me + 1) << 48) | ((g & 0xFFFF) << 32) | (page & 0xFFFFFFFF);
}

struct block {
	char *addr;
	uint64_t pages;
	uint64_t gen;
	int order;
	int long_lived;
};

/* Map 2^order pages (2 MiB-aligned and MADV_HUGEPAGE when thp) and write a
 * canary in each: the page faults are the allocations. */
static int map_block(struct block *b, int order)
{
	uint64_t len = PAGE << order;
	int huge = cfg.thp && order >= 9;
	uint64_t extra = huge ? (2UL << 20) : 0;
	char *p = mmap(NULL, len + extra, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	if (huge) {     /* trim to a 2 MiB-aligned range */
		char *a = (char *)(((uintptr_t)p + (2UL << 20) - 1) & ~((2UL << 20) - 1));
		if (a > p)
			munmap(p, a - p);
		if (a + len < p + len + extra)
			munmap(a + len, p + len + extra - (a + len));
		p = a;
	}
	madvise(p, len, cfg.thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	b->addr = p;
	b->pages = 1UL << order;
	b->order = order;
	b->gen = ++gen;
	for (uint64_t i = 0; i < b->pages; i++)
		*(volatile uint64_t *)(p + i * PAGE) = canary(b->gen, i);
	return 0;
}

/* Check every canary, then unmap: the frees. */
static void unmap_block(struct block *b, uint64_t *bad, uint64_t *zero)
{
	for (uint64_t i = 0; i < b->pages; i++) {
		uint64_t v = *(volatile uint64_t *)(b->addr + i * PAGE);
		if (v != canary(b->gen, i)) {
			if (v == 0)
				(*zero)++;
			else
				(*bad)++;
		}
	}
	munmap(b->addr, b->pages * PAGE);
	b->addr = NULL;
}

static void sleep_until(uint64_t t)
{
	for (uint64_t n = now_ns(); n < t; n = now_ns()) {
		struct timespec ts = {(t - n) / 1000000000UL, (t - n) % 1000000000UL};
		nanosleep(&ts, NULL);
	}
}

static uint64_t rng_state;

static uint64_t rng(void)    /* xorshift64* */
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ULL;
}

static double rnd(void)
{
	return (rng() >> 11) * (1.0 / 9007199254740992.0);
}

static int random_order(void)   /* shmalloc/workload.py random_order */
{
	double r = rnd();
	if (r < 0.60)
		return 0;
	if (r < 0.70)
		return 1;
	if (r < 0.80)
		return 2;
	if (r < 0.85)
		return 3;
	if (r < 0.95)
		return 4 + (int)(rng() % 5);
	return 9;
}

struct held {
	struct block *b;
	uint64_t n, cap, pages;
	uint64_t bad, zero;
};

static void report_canaries(struct held *h)
{
	if (h->bad)
		event(EV_BAD_CANARY, h->bad);
	if (h->zero)
		event(EV_ZERO_CANARY, h->zero);
	h->bad = h->zero = 0;
}

/* Free everything held (the shrink of phased, the end of a workload). */
static void release_all(struct held *h)
{
	uint64_t bytes = h->pages * PAGE;
	event(EV_FREEING, bytes);
	for (uint64_t i = 0; i < h->n; i++)
		unmap_block(&h->b[i], &h->bad, &h->zero);
	h->n = h->pages = 0;
	event(EV_FREED, bytes);
	report_canaries(h);
}

/* shmalloc/workload.py run_random, until `deadline` (ns). */
static void run_random(struct held *h, uint64_t target, uint64_t seed, uint64_t deadline)
{
	rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;
	while (now_ns() < deadline) {
		if (h->pages < target && h->n < h->cap) {
			struct block *b = &h->b[h->n];
			if (map_block(b, random_order()) == 0) {
				b->long_lived = rnd() < 0.2;
				h->pages += b->pages;
				h->n++;
				continue;
			}
			event(EV_MAP_FAILED, 0);
			if (h->n == 0)
				continue;
		}
		uint64_t j = rng() % h->n;
		if (h->b[j].long_lived && h->pages < 2 * target && rnd() < 0.9)
			continue;
		h->pages -= h->b[j].pages;
		unmap_block(&h->b[j], &h->bad, &h->zero);
		h->b[j] = h->b[--h->n];
	}
	event(EV_TOUCHED, h->pages * PAGE);
}

static void worker(int id, uint64_t t_start)
{
	me = id;
	uint64_t end = t_start + cfg.duration_ms * 1000000UL;
	struct held h = {0};
	if (!strcmp(cfg.workload, "hog")) {
		uint64_t pages = (uint64_t)(cfg.hog_share * (cfg.memory / PAGE)) / cfg.workers;
		/* the model's hog stops where memory runs out; here the OOM killer
		 * would end it: stop short of MemAvailable less a margin instead */
		long avail_kb = meminfo_kb("MemAvailable:");
		uint64_t cap = avail_kb > 65536 ? (uint64_t)(avail_kb - 32768) / 4 / cfg.workers : 1;
		if (pages > cap) {
			event(EV_CAPPED, pages * PAGE);
			pages = cap;
		}
		struct block b = {0};
		h.b = &b;
		/* one mapping; written page by page as the model's hog allocates
		 * order-0 pages one by one */
		char *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (p == MAP_FAILED) {
			event(EV_MAP_FAILED, pages * PAGE);
			_exit(2);
		}
		madvise(p, pages * PAGE, cfg.thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
		b.addr = p;
		b.pages = pages;
		b.gen = ++gen;
		for (uint64_t i = 0; i < pages; i++)
			*(volatile uint64_t *)(p + i * PAGE) = canary(b.gen, i);
		h.n = 1;
		h.pages = pages;
		event(EV_TOUCHED, pages * PAGE);
		sleep_until(now_ns() + cfg.hold_ms * 1000000UL);
		release_all(&h);
		sleep_until(end);
	} else if (!strcmp(cfg.workload, "page_fault1") || !strcmp(cfg.workload, "thp")) {
		int order = !strcmp(cfg.workload, "thp") ? 9 : 0;
		uint64_t nblocks = cfg.working_set / (PAGE << order);
		h.cap = nblocks ? nblocks : 1;
		h.b = calloc(h.cap, sizeof(*h.b));
		while (now_ns() < end) {
			for (h.n = 0; h.n < h.cap && now_ns() < end; h.n++) {
				if (map_block(&h.b[h.n], order)) {
					event(EV_MAP_FAILED, 0);
					break;
				}
				h.pages += h.b[h.n].pages;
			}
			for (uint64_t i = 0; i < h.n; i++)
				unmap_block(&h.b[i], &h.bad, &h.zero);
			h.n = h.pages = 0;
			report_canaries(&h);
		}
	} else {    /* random, phased */
		uint64_t target = cfg.working_set / PAGE;
		h.cap = target ? target : 1;
		h.b = calloc(h.cap, sizeof(*h.b));
		uint64_t seed = cfg.seed * 1000003ULL + id;
		if (!strcmp(cfg.workload, "phased")) {
			run_random(&h, target, seed, t_start + cfg.duration_ms * 400000UL);
			release_all(&h);
			sleep_until(t_start + cfg.duration_ms * 700000UL);
			run_random(&h, target, seed + 1, end);
		} else {
			run_random(&h, target, seed, end);
		}
		release_all(&h);
	}
	event(EV_END, 0);
	_exit(0);
}

/* ------------------------------------------------------------------ */
/* the sampler (the parent)                                            */
/* ------------------------------------------------------------------ */

static void hello(void)
{
	struct utsname u;
	char order[32] = "?", thp[128] = "?", min_free[32] = "0";
	uname(&u);
	read_file("/proc/sys/vm/min_free_kbytes", min_free, sizeof(min_free));
	read_file("/sys/module/page_reporting/parameters/page_reporting_order", order, sizeof(order));
	read_file("/sys/kernel/mm/transparent_hugepage/enabled", thp, sizeof(thp));
	order[strcspn(order, "\n")] = 0;
	thp[strcspn(thp, "\n")] = 0;
	for (char *c = thp; *c; c++)
		if (*c == ' ')
			*c = '_';
	emit("H t=%llu kernel=%s order=%s memtotal_kb=%ld cpus=%ld thp=%s kprobes=%d workload=%s "
	     "min_free_kb=%ld", (unsigned long long)now_ns(), u.release, order,
	     meminfo_kb("MemTotal:"), sysconf(_SC_NPROCESSORS_ONLN), thp, trace_fd >= 0, cfg.workload,
	     strtol(min_free, NULL, 10));
}

/* Sample every sample_ms and forward the kprobe events until `until` (ns)
 * or, when `idle_wait`, until the reporter has gone idle. Returns 1 when it
 * stopped because the reporter was idle. */
static int sample_loop(uint64_t until, int idle_wait, uint64_t *next_sample, uint64_t *next_scan,
		       int *alive)
{
	uint64_t t0 = now_ns();
	for (;;) {
		uint64_t t = now_ns();
		if (t >= *next_sample) {
			sample_guest();
			*next_sample += cfg.sample_ms * 1000000UL;
			if (*next_sample < t)
				*next_sample = t + cfg.sample_ms * 1000000UL;
		}
		if (next_scan && cfg.scan_ms && t >= *next_scan) {
			scan_kpageflags();
			*next_scan = now_ns() + cfg.scan_ms * 1000000UL;
		}
		drain_trace();
		if (idle_wait) {
			uint64_t quiet = pass_running ? 0 : now_ns() - (passes_seen ? last_pass_end_ns : t0);
			if (quiet >= IDLE_AFTER_MS * 1000000UL && (passes_seen || trace_fd < 0))
				return 1;
			if (!passes_seen && now_ns() - t0 >= 2 * IDLE_AFTER_MS * 1000000UL)
				return 1;   /* no pass in twice the delay: nothing to report */
		}
		if (now_ns() >= until)
			return 0;
		int watch = alive && *alive > 0;
		struct pollfd pf[2] = {{watch ? ev_pipe[0] : -1, POLLIN, 0}, {trace_fd, POLLIN, 0}};
		uint64_t wake = *next_sample < until ? *next_sample : until;
		int ms = wake > now_ns() ? (int)((wake - now_ns()) / 1000000UL) + 1 : 0;
		if (ms > 20)
			ms = 20;    /* look at trace_pipe often whether or not it polls */
		poll(pf, 2, ms);
		if (watch && (pf[0].revents & (POLLIN | POLLHUP))) {
			struct event e;
			while (read(ev_pipe[0], &e, sizeof(e)) == sizeof(e)) {
				emit("E t=%llu w=%d ev=%s bytes=%llu", (unsigned long long)e.t, e.worker,
				     EV_NAMES[e.kind], (unsigned long long)e.value);
				if (e.kind == EV_END)
					(*alive)--;
			}
		}
	}
}

static int run(void)
{
	out_fd = open_channel("/dev/ttyS1");
	if (out_fd < 0) {
		out_fd = 1;
		fatal("cannot open /dev/ttyS1, the data channel: %s", strerror(errno));
	}
	parse_cmdline();
	trace_fd = open("/sys/kernel/tracing/trace_pipe", O_RDONLY | O_NONBLOCK);
	hello();
	if (cfg.probe)
		return 0;
	if (pipe2(ev_pipe, O_CLOEXEC))
		fatal("pipe: %s", strerror(errno));
	uint64_t next_sample = now_ns(), next_scan = now_ns();
	if (cfg.start_idle) {
		emit("W t=%llu waiting for the reporter to go idle", (unsigned long long)now_ns());
		if (!sample_loop(now_ns() + cfg.settle_ms * 1000000UL, 1, &next_sample, NULL, NULL))
			emit("W t=%llu settle_timeout=1", (unsigned long long)now_ns());
	}
	scan_kpageflags();
	fcntl(ev_pipe[0], F_SETFL, O_NONBLOCK);
	uint64_t t_start = now_ns();
	emit("S t=%llu", (unsigned long long)t_start);
	int alive = 0;
	pid_t pids[MAX_WORKERS];
	for (int i = 0; i < cfg.workers; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			close(ev_pipe[0]);
			worker(i, t_start);
		}
		if (pids[i] < 0)
			fatal("fork: %s", strerror(errno));
		worker_pids[nr_worker_pids++] = pids[i];
		alive++;
	}
	next_scan = now_ns() + cfg.scan_ms * 1000000UL;
	uint64_t end = t_start + cfg.duration_ms * 1000000UL;
	sample_loop(end, 0, &next_sample, &next_scan, &alive);
	while (alive > 0) {     /* the workers free what they hold and say "end" */
		if (now_ns() >= end + 60000000000UL)
			fatal("workers still running 60 s after the end");
		sample_loop(now_ns() + cfg.sample_ms * 1000000UL, 0, &next_sample, &next_scan, &alive);
	}
	long minflt = 0, majflt = 0;
	for (int i = 0; i < cfg.workers; i++) {
		int status;
		struct rusage ru;
		if (wait4(pids[i], &status, 0, &ru) > 0) {
			minflt += ru.ru_minflt;
			majflt += ru.ru_majflt;
			if (!WIFEXITED(status) || WEXITSTATUS(status))
				emit("F worker %d ended with status 0x%x", i, status);
		}
	}
	nr_worker_pids = 0;     /* reaped: their /proc/PID is gone, their count is here */
	reaped_minflt = minflt;
	sample_guest();
	scan_kpageflags();
	drain_trace();
	emit("X t=%llu guest_minflt=%ld guest_majflt=%ld", (unsigned long long)now_ns(), minflt,
	     majflt);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "--workloads")) {
		for (int i = 0; WORKLOADS[i]; i++)
			printf("%s\n", WORKLOADS[i]);
		return 0;
	}
	if (argc >= 2 && !strcmp(argv[1], "--check")) {
		for (int i = 2; i < argc; i++) {
			char pair[512];
			snprintf(pair, sizeof(pair), "%s", argv[i]);
			const char *e = parse_pair(pair);
			if (e) {
				printf("%s\n", e);
				return 2;
			}
		}
		return 0;
	}
	return run();
}
