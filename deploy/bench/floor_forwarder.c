/*
 * floor_forwarder: the floor of this machine for an SFU's traffic shape.
 *
 * It forwards every datagram it receives to every other member of the sender's meeting
 * and does nothing else: no ICE, no DTLS, no SRTP, no RTCP, no sequence rewriting, no
 * queues, no threads. What it costs per forwarded packet is what the kernel's UDP
 * receive and send paths cost on this machine, plus a table lookup: any SFU that sends
 * one datagram per copy pays at least this much. `deploy/bench/floor.sh` drives it with
 * `hearth-loadgen --target floor` (the same participants, sizes and rates as the real
 * runs) and reads its CPU from /proc, as it reads Hearth's.
 *
 * Wire format (all of it):
 *   - registration: 8 bytes, "HFLR" then the meeting number (u32, big endian). The
 *     sender's address (IP and port) joins that meeting; the floor answers with the same
 *     8 bytes (the participant counts as connected when the answer arrives). Repeats are
 *     answered and change nothing.
 *   - anything else from a registered address is media: one copy to each other member
 *     of its meeting, the bytes untouched. From an unknown address: dropped and counted.
 *
 * One thread. Receives with recvmmsg (up to -b datagrams per call); sends each copy with
 * its own sendto (default: what the earlier floor measurement and Hearth do), or, with
 * -m, all copies of a receive batch with sendmmsg (saves the system call entry per copy,
 * not the per-datagram kernel work). Counters print on stdout at exit (SIGINT, SIGTERM, or
 * the -t time limit).
 *
 *   cc -O2 -Wall -o floor_forwarder floor_forwarder.c
 *   ./floor_forwarder [-a 127.0.0.1] [-p 37990] [-b 64] [-m] [-t 3600] [-r 4194304]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 256
#define MAX_DGRAM 2048
#define MAX_MEMBERS 65536          /* participants in all */
#define SLOTS (MAX_MEMBERS * 2)    /* open-addressing table, power of two */
#define MAX_MEETING 1048576u       /* meeting numbers 0 .. MAX_MEETING-1 */
#define SEND_CHUNK 1024            /* sendmmsg: at most UIO_MAXIOV messages per call */

struct meeting {
	struct sockaddr_in *addrs;  /* members, in joining order */
	uint32_t len, cap;
};

struct member {
	uint32_t ip, port;          /* network order; port 0 = empty slot */
	uint32_t meeting;
};

static struct member slots[SLOTS];
static uint32_t members;
static struct meeting **meetings;  /* MAX_MEETING pointers, allocated lazily */

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static struct {
	unsigned long long recv_calls, in, in_bytes, out, out_bytes, send_calls;
	unsigned long long send_errors, unknown_src, registrations, rejected, truncated;
} c;

static uint32_t slot_of(uint32_t ip, uint32_t port) {
	uint32_t h = (ip * 2654435761u) ^ (port * 40503u);
	h ^= h >> 15;
	uint32_t i = h & (SLOTS - 1);
	while (slots[i].port && (slots[i].ip != ip || slots[i].port != port))
		i = (i + 1) & (SLOTS - 1);
	return i;
}

/* Adds the address to the meeting (once). Returns 0, or -1 when a limit is hit. */
static int join(const struct sockaddr_in *from, uint32_t meeting) {
	if (meeting >= MAX_MEETING)
		return -1;
	uint32_t i = slot_of(from->sin_addr.s_addr, from->sin_port);
	if (slots[i].port)
		return slots[i].meeting == meeting ? 0 : -1;
	if (members >= MAX_MEMBERS)
		return -1;
	struct meeting *m = meetings[meeting];
	if (!m) {
		m = calloc(1, sizeof *m);
		if (!m)
			return -1;
		meetings[meeting] = m;
	}
	if (m->len == m->cap) {
		uint32_t cap = m->cap ? m->cap * 2 : 8;
		struct sockaddr_in *a = realloc(m->addrs, cap * sizeof *a);
		if (!a)
			return -1;
		m->addrs = a;
		m->cap = cap;
	}
	m->addrs[m->len++] = *from;
	slots[i] = (struct member){from->sin_addr.s_addr, from->sin_port, meeting};
	members++;
	return 0;
}

static double now_s(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* sendmmsg of queued copies; a copy the kernel refuses is counted and skipped. Returns 0. */
static unsigned flush(int fd, struct mmsghdr *tx, unsigned ntx) {
	for (unsigned off = 0; off < ntx;) {
		c.send_calls++;
		int sent = sendmmsg(fd, tx + off, ntx - off, 0);
		if (sent < 0 && errno == EINTR)
			continue;
		if (sent <= 0) {
			c.send_errors++;
			off++;
			continue;
		}
		for (int j = 0; j < sent; j++) {
			c.out++;
			c.out_bytes += tx[off + j].msg_len;
		}
		off += sent;
	}
	return 0;
}

static void usage(const char *me) {
	fprintf(stderr,
		"usage: %s [-a ADDR] [-p PORT] [-b BATCH] [-m] [-t SECONDS] [-r BUFBYTES]\n"
		"  -a  IPv4 address to bind (default 127.0.0.1)\n"
		"  -p  UDP port (default 37990)\n"
		"  -b  datagrams per recvmmsg (1..%d, default 64)\n"
		"  -m  send the copies of a receive batch with sendmmsg (default: one sendto each)\n"
		"  -t  exit after this many seconds (default 3600)\n"
		"  -r  SO_RCVBUF and SO_SNDBUF (default 4 MiB)\n",
		me, MAX_BATCH);
	exit(2);
}

int main(int argc, char **argv) {
	const char *addr = "127.0.0.1";
	int port = 37990, batch = 64, use_mmsg = 0, opt;
	double limit = 3600;
	int bufsize = 4 << 20;
	while ((opt = getopt(argc, argv, "a:p:b:mt:r:h")) != -1) {
		switch (opt) {
		case 'a': addr = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 'b': batch = atoi(optarg); break;
		case 'm': use_mmsg = 1; break;
		case 't': limit = atof(optarg); break;
		case 'r': bufsize = atoi(optarg); break;
		default: usage(argv[0]);
		}
	}
	if (batch < 1 || batch > MAX_BATCH || port < 1 || port > 65535 || limit <= 0)
		usage(argv[0]);

	meetings = calloc(MAX_MEETING, sizeof *meetings);
	if (!meetings) { perror("calloc"); return 1; }

	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) { perror("socket"); return 1; }
	/* Root may go past net.core.{r,w}mem_max; others get what the limit allows. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bufsize, sizeof bufsize) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsize, sizeof bufsize) < 0)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
	/* Wake at least every 200 ms to check the time limit. */
	struct timeval tv = {0, 200000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(port)};
	if (inet_pton(AF_INET, addr, &me.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", addr); return 2; }
	if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) { perror("bind"); return 1; }

	struct sigaction sa = {.sa_handler = on_signal};  /* no SA_RESTART: recvmmsg returns EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	static char bufs[MAX_BATCH][MAX_DGRAM];
	static struct iovec iov[MAX_BATCH];
	static struct sockaddr_in from[MAX_BATCH];
	static struct mmsghdr rx[MAX_BATCH];
	static struct mmsghdr tx[SEND_CHUNK];
	static struct iovec txiov[SEND_CHUNK];
	for (int i = 0; i < batch; i++) {
		iov[i] = (struct iovec){bufs[i], MAX_DGRAM};
		rx[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i],
						.msg_iov = &iov[i], .msg_iovlen = 1};
	}
	int sock_rcv = 0, sock_snd = 0;
	socklen_t sl = sizeof sock_rcv;
	getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sock_rcv, &sl);
	sl = sizeof sock_snd;
	getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sock_snd, &sl);
	fprintf(stderr, "floor_forwarder: %s:%d, batch %d, %s, rcvbuf %d sndbuf %d, limit %.0f s, pid %d\n",
		addr, port, batch, use_mmsg ? "sendmmsg" : "sendto per copy", sock_rcv, sock_snd, limit,
		(int)getpid());

	double deadline = now_s() + limit;
	unsigned ntx = 0;
	while (!stop) {
		if (now_s() >= deadline)
			break;
		for (int i = 0; i < batch; i++)
			rx[i].msg_hdr.msg_namelen = sizeof from[i];
		int n = recvmmsg(fd, rx, batch, MSG_WAITFORONE, NULL);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
				continue;
			perror("recvmmsg");
			break;
		}
		c.recv_calls++;
		for (int i = 0; i < n; i++) {
			const char *d = bufs[i];
			unsigned len = rx[i].msg_len;
			if (rx[i].msg_hdr.msg_flags & MSG_TRUNC) { c.truncated++; continue; }
			if (len == 8 && memcmp(d, "HFLR", 4) == 0) {
				uint32_t meeting;
				memcpy(&meeting, d + 4, 4);
				if (join(&from[i], ntohl(meeting)) == 0) {
					c.registrations++;
					sendto(fd, d, 8, 0, (struct sockaddr *)&from[i], sizeof from[i]);
				} else {
					c.rejected++;
				}
				continue;
			}
			uint32_t s = slot_of(from[i].sin_addr.s_addr, from[i].sin_port);
			if (!slots[s].port) { c.unknown_src++; continue; }
			c.in++;
			c.in_bytes += len;
			const struct meeting *m = meetings[slots[s].meeting];
			for (uint32_t k = 0; k < m->len; k++) {
				const struct sockaddr_in *to = &m->addrs[k];
				if (to->sin_addr.s_addr == from[i].sin_addr.s_addr && to->sin_port == from[i].sin_port)
					continue;
				if (!use_mmsg) {
					c.send_calls++;
					if (sendto(fd, d, len, 0, (const struct sockaddr *)to, sizeof *to) < 0) {
						c.send_errors++;
					} else {
						c.out++;
						c.out_bytes += len;
					}
					continue;
				}
				txiov[ntx] = (struct iovec){(void *)d, len};
				tx[ntx].msg_hdr = (struct msghdr){.msg_name = (void *)to, .msg_namelen = sizeof *to,
								  .msg_iov = &txiov[ntx], .msg_iovlen = 1};
				/* The queue points into this batch's buffers: it is sent before the next receive. */
				if (++ntx == SEND_CHUNK)
					ntx = flush(fd, tx, ntx);
			}
		}
		if (ntx)
			ntx = flush(fd, tx, ntx);
	}

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
	printf("floor_forwarder: members=%u registrations=%llu rejected=%llu in=%llu in_bytes=%llu out=%llu "
	       "out_bytes=%llu send_errors=%llu unknown_src=%llu truncated=%llu recv_calls=%llu "
	       "send_calls=%llu avg_recv_batch=%.2f cpu_s=%.3f us_per_out=%.3f mode=%s\n",
	       members, c.registrations, c.rejected, c.in, c.in_bytes, c.out, c.out_bytes, c.send_errors,
	       c.unknown_src, c.truncated, c.recv_calls, c.send_calls,
	       c.recv_calls ? (double)(c.in + c.registrations + c.unknown_src) / c.recv_calls : 0.0, cpu,
	       c.out ? cpu * 1e6 / c.out : 0.0, use_mmsg ? "sendmmsg" : "sendto");
	fflush(stdout);
	close(fd);
	return 0;
}
