/*
 * fixedrate: an open-loop HTTP/1.1 load generator for the "p99 at half the maximum rate"
 * figure of the REST benchmark (wrk has no fixed-rate mode, wrk2 is not packaged in Debian).
 *
 *   fixedrate -p PORT -u PATH -t TOKENS_FILE -r RATE -d SECONDS [-c CONNS] [-a 127.0.0.1]
 *
 * Request k is due at start + k/RATE, whatever happened to the ones before (open loop). It
 * goes out on an idle keep-alive connection (one request in flight per connection, no
 * pipelining); if all CONNS connections are busy it waits for one. Its latency is measured
 * from when it was due, not from when it went out, so a server that falls behind cannot
 * hide the queue it builds (no coordinated omission). Each request carries the next token
 * of TOKENS_FILE (one per line, round robin), like wrk.lua.
 *
 * Timing: epoll_pwait2 sleeps with nanosecond timeouts and 1 ns timer slack, and the last
 * 30 microseconds before a request is due are spun, so requests leave when due and not in
 * bursts. How late they actually left is reported (send_lag_*), so a late or saturated
 * generator shows up in the output instead of in the server's figures.
 *
 * Prints one JSON object: requests sent and answered, status counts, latency percentiles in
 * microseconds, the achieved rate, the send lag.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE 65536
#define SPIN_NS 30000

struct conn {
    int fd;
    int busy;
    int64_t due;    /* when its request was due (ns) */
    size_t len;     /* bytes in buf */
    char buf[BUF_SIZE];
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "fixedrate: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(void) {
    fprintf(stderr, "usage: fixedrate -p PORT -u PATH -t TOKENS_FILE -r RATE -d SECONDS "
                    "[-c CONNS] [-a ADDR]\n");
    exit(2);
}

static int open_conn(const struct sockaddr_in *addr) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The q-quantile of sorted v[0..n) (nearest rank), in microseconds. */
static double pct_us(const int64_t *v, size_t n, double q) {
    if (n == 0) return 0;
    size_t i = (size_t)(q * (double)n);
    if (i >= n) i = n - 1;
    return (double)v[i] / 1000.0;
}

/*
 * Is a whole response in c->buf? Returns its length (headers + body) and its status, 0 if
 * more bytes are needed, -1 if it cannot be parsed (no Content-Length, chunked).
 */
static long response_length(const struct conn *c, int *status) {
    const char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (end == NULL) return c->len >= BUF_SIZE ? -1 : 0;
    size_t head = (size_t)(end - c->buf) + 4;
    if (c->len < 12 || memcmp(c->buf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(c->buf + 9);
    long body = -1;
    const char *p = c->buf;
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p) + 2, "\r\n", 2);
        if (eol == NULL) break;
        if ((size_t)(eol - p) > 15 && strncasecmp(p, "content-length:", 15) == 0)
            body = strtol(p + 15, NULL, 10);
        p = eol + 2;
    }
    if (body < 0) return -1;
    if (head + (size_t)body > BUF_SIZE) return -1;
    return c->len >= head + (size_t)body ? (long)(head + (size_t)body) : 0;
}

int main(int argc, char **argv) {
    const char *addr_s = "127.0.0.1", *path = NULL, *tokens_file = NULL;
    int port = 0, nconns = 32;
    double rate = 0, seconds = 0;
    int opt;
    while ((opt = getopt(argc, argv, "a:p:u:t:r:d:c:")) != -1) {
        switch (opt) {
        case 'a': addr_s = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'u': path = optarg; break;
        case 't': tokens_file = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'c': nconns = atoi(optarg); break;
        default: usage();
        }
    }
    if (port <= 0 || !path || !tokens_file || rate <= 0 || seconds <= 0 || nconns <= 0) usage();

    /* The requests, one per token. */
    FILE *f = fopen(tokens_file, "r");
    if (!f) die(tokens_file);
    size_t nreq = 0, cap = 1024;
    char **reqs = malloc(cap * sizeof *reqs);
    size_t *req_len = malloc(cap * sizeof *req_len);
    char line[16384];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0]) continue;
        if (nreq == cap) {
            cap *= 2;
            reqs = realloc(reqs, cap * sizeof *reqs);
            req_len = realloc(req_len, cap * sizeof *req_len);
        }
        int n = asprintf(&reqs[nreq], "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n\r\n",
                         path, addr_s, port, line);
        if (n < 0) die("asprintf");
        req_len[nreq++] = (size_t)n;
    }
    fclose(f);
    if (nreq == 0) { fprintf(stderr, "fixedrate: no tokens in %s\n", tokens_file); return 2; }

    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, addr_s, &addr.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    int *idle = malloc((size_t)nconns * sizeof *idle); /* stack of idle connections */
    int nidle = 0;
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = open_conn(&addr);
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev) < 0) die("epoll_ctl");
        idle[nidle++] = i;
    }

    const size_t total = (size_t)(rate * seconds);
    const double interval = 1e9 / rate;
    int64_t *lat = malloc(total * sizeof *lat);
    int64_t *lag = malloc(total * sizeof *lag);
    size_t nlat = 0, sent = 0, statuses[6] = {0}, reconnects = 0;
    const int64_t start = now_ns() + 1000000; /* 1 ms to settle */
    const int64_t give_up = start + (int64_t)(seconds * 1e9) + 5000000000LL;
    struct epoll_event events[256];
    int in_flight = 0;

    for (;;) {
        int64_t now = now_ns();
        /* Send what is due, as long as connections are free. */
        while (sent < total && nidle > 0) {
            int64_t due = start + (int64_t)((double)sent * interval);
            if (due > now) break;
            struct conn *c = &conns[idle[--nidle]];
            size_t k = sent % nreq;
            ssize_t w = send(c->fd, reqs[k], req_len[k], MSG_NOSIGNAL);
            if (w != (ssize_t)req_len[k]) die("send (whole request)");
            c->busy = 1;
            c->due = due;
            c->len = 0;
            lag[sent] = now - due;
            sent++;
            in_flight++;
            now = now_ns();
        }
        if (sent == total && in_flight == 0) break;
        if (now > give_up) break;

        /* Wait for answers, or until the next request is due. */
        int64_t wait = 100000000; /* 100 ms */
        if (sent < total && nidle > 0) {
            int64_t due = start + (int64_t)((double)sent * interval);
            wait = due - now - SPIN_NS;
            if (wait < 0) wait = 0;
        }
        struct timespec ts = { .tv_sec = wait / 1000000000, .tv_nsec = wait % 1000000000 };
        int n = epoll_pwait2(ep, events, 256, &ts, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_pwait2");
        }
        for (int e = 0; e < n; e++) {
            struct conn *c = &conns[events[e].data.u32];
            ssize_t r = recv(c->fd, c->buf + c->len, BUF_SIZE - c->len, 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                /* Closed by the server: count the request as failed and reconnect. */
                if (c->busy) { statuses[0]++; in_flight--; }
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = open_conn(&addr);
                struct epoll_event ev = { .events = EPOLLIN, .data.u32 = events[e].data.u32 };
                if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
                c->busy = 0;
                c->len = 0;
                idle[nidle++] = (int)events[e].data.u32;
                reconnects++;
                continue;
            }
            c->len += (size_t)r;
            int status = 0;
            long whole = response_length(c, &status);
            if (whole < 0) { fprintf(stderr, "fixedrate: cannot parse a response\n"); return 1; }
            if (whole == 0 || !c->busy) continue;
            lat[nlat++] = now_ns() - c->due;
            int cls = status / 100;
            statuses[cls >= 1 && cls <= 5 ? cls : 0]++;
            c->busy = 0;
            c->len -= (size_t)whole;
            memmove(c->buf, c->buf + whole, c->len);
            idle[nidle++] = (int)events[e].data.u32;
            in_flight--;
        }
    }
    const int64_t elapsed = now_ns() - start;

    qsort(lat, nlat, sizeof *lat, cmp_i64);
    qsort(lag, sent, sizeof *lag, cmp_i64);
    double mean = 0;
    for (size_t i = 0; i < nlat; i++) mean += (double)lat[i];
    mean = nlat ? mean / (double)nlat / 1000.0 : 0;
    printf("{\"target_rate\":%.1f,\"duration_s\":%.3f,\"connections\":%d,\"scheduled\":%zu,"
           "\"sent\":%zu,\"answered\":%zu,\"unanswered\":%d,\"achieved_rate\":%.1f,"
           "\"status_2xx\":%zu,\"status_3xx\":%zu,\"status_4xx\":%zu,\"status_5xx\":%zu,"
           "\"failed\":%zu,\"reconnects\":%zu,"
           "\"mean_us\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
           "\"max_us\":%.1f,\"send_lag_p50_us\":%.1f,\"send_lag_p99_us\":%.1f,"
           "\"send_lag_max_us\":%.1f}\n",
           rate, (double)elapsed / 1e9, nconns, total, sent, nlat, in_flight,
           (double)nlat / ((double)elapsed / 1e9),
           statuses[2], statuses[3], statuses[4], statuses[5], statuses[0] + statuses[1],
           reconnects, mean, pct_us(lat, nlat, 0.50), pct_us(lat, nlat, 0.90),
           pct_us(lat, nlat, 0.99), pct_us(lat, nlat, 0.999),
           nlat ? (double)lat[nlat - 1] / 1000.0 : 0.0, pct_us(lag, sent, 0.50),
           pct_us(lag, sent, 0.99), sent ? (double)lag[sent - 1] / 1000.0 : 0.0);
    return 0;
}
