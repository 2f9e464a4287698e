/*
 * server.c - the classic "chat box using TCP/IP socket programming": a relay.
 *
 *     server PORT [HOST]
 *
 * Every complete line a client sends is relayed to every other client as
 * "<userN> LINE\n". One process, one poll() loop, non-blocking sockets:
 *
 * - Lines, not recv() chunks, are the unit. TCP is a byte stream: one recv() may
 *   return half a line or three lines, so each client has its own input buffer and
 *   only whole lines are relayed. Because a relayed line is appended to each
 *   recipient's output queue in one piece, two senders' lines never interleave.
 *   (Compile with -DPREFIX_PER_CHUNK for the classic bug instead, which prefixes
 *   whatever one recv() returned: lines break apart under load. The harness's tests
 *   use it to prove the harness notices.)
 * - Nobody waits for a slow reader. Each client has its own output queue, flushed when
 *   its socket is writable; one that lets SENDQ_MAX bytes pile up is disconnected
 *   alone instead of stalling the room, as a blocking send() would.
 * - poll(), not select(): select() cannot watch descriptors >= FD_SETSIZE (1024).
 *
 * The first line on stdout is "listening on HOST:PORT" (the real port when PORT is
 * 0), so scripts and the test harness can wait for it. SIGTERM or SIGINT: every
 * connection is closed and the server exits 0.
 *
 * Build: cc -O2 -Wall -Wextra -o server server.c
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_CLIENTS 1000      /* one more is told "! server full" and closed */
#define MAX_LINE 4096         /* longer lines are refused, like chatbox.server's --max-line */
#define SENDQ_MAX (1 << 20)   /* bytes queued for one client before it is cut off */
#ifdef PREFIX_PER_CHUNK
enum { PER_CHUNK = 1 };
#define RECV_BUF 256          /* the naive relay's small buffer: more lines get cut */
#else
enum { PER_CHUNK = 0 };
#define RECV_BUF 65536        /* one recv() takes many lines: fewer system calls */
#endif

struct client {
    int fd;                /* -1: this slot is free */
    int id;                /* N in "<userN>" */
    char in[MAX_LINE];     /* the line being received, not yet complete */
    size_t inlen;
    int overlong;          /* discarding the rest of a line that was too long */
    char *out;             /* queued output: out[outoff..outlen) is still to send */
    size_t outoff, outlen, outcap;
    int closing;           /* it sent EOF: close once its queue is flushed */
    int dead;              /* close at the end of this loop turn (never mid-iteration) */
};

static struct client clients[MAX_CLIENTS];
static int signal_pipe[2]; /* the self-pipe: a signal wakes poll() without a race */

static void on_signal(int sig)
{
    int saved = errno; /* a handler must not clobber errno of the code it interrupted */
    char byte = (char)sig;
    if (write(signal_pipe[1], &byte, 1) < 0) {
        /* The pipe is full, so a wake-up is already pending: nothing is lost. */
    }
    errno = saved;
}

static void set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0)
        fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* Send what is queued for c without blocking; cut it off on a hard error. */
static void flush_client(struct client *c)
{
    while (!c->dead && c->outoff < c->outlen) {
        ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                c->dead = 1; /* the peer is gone (EPIPE, ECONNRESET): nothing to tell it */
            return;
        }
        c->outoff += (size_t)n;
    }
    if (c->outoff == c->outlen)
        c->outoff = c->outlen = 0;
}

/* Queue len bytes for c in one piece (sent at the end of the loop turn); a client
 * that reads too slowly is cut off. */
static void enqueue(struct client *c, const char *data, size_t len)
{
    if (c->dead)
        return;
    if (c->outlen - c->outoff + len > SENDQ_MAX) {
        fprintf(stderr, "user%d: reads too slowly, disconnected\n", c->id);
        c->dead = 1;
        return;
    }
    if (c->outlen + len > c->outcap && c->outoff > 0) {
        /* Reclaim what was already sent before growing the buffer. */
        memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
        c->outlen -= c->outoff;
        c->outoff = 0;
    }
    if (c->outlen + len > c->outcap) {
        size_t cap = c->outcap ? c->outcap : 4096;
        while (cap < c->outlen + len)
            cap *= 2;
        char *grown = realloc(c->out, cap);
        if (grown == NULL) {
            fprintf(stderr, "user%d: out of memory, disconnected\n", c->id);
            c->dead = 1;
            return;
        }
        c->out = grown;
        c->outcap = cap;
    }
    memcpy(c->out + c->outlen, data, len);
    c->outlen += len;
}

/* Send "<userN> " + data to everyone but the sender (data carries its own newline). */
static void broadcast(const struct client *from, const char *data, size_t len)
{
    static char msg[32 + RECV_BUF + MAX_LINE];
    int head = snprintf(msg, 32, "<user%d> ", from->id);
    memcpy(msg + head, data, len);
    for (int i = 0; i < MAX_CLIENTS; i++) {
        struct client *c = &clients[i];
        if (c->fd >= 0 && c != from && !c->closing)
            enqueue(c, msg, (size_t)head + len);
    }
}

/* A complete line arrived (without its '\n'): clean it up and relay it. */
static void relay_line(struct client *c)
{
    size_t len = c->inlen;
    if (len > 0 && c->in[len - 1] == '\r') /* telnet and Windows clients send CRLF */
        len--;
    /* Control characters (escape sequences, BEL, NUL...) are shown, never passed on
     * raw: another user's terminal must not obey what someone typed. */
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)c->in[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            c->in[i] = '?';
    }
    c->in[len] = '\n'; /* in[] has room: inlen < MAX_LINE always holds here */
    broadcast(c, c->in, len + 1);
    c->inlen = 0;
}

/* Append received bytes to c's line buffer, relaying each line as it completes. */
static void take_bytes(struct client *c, const char *data, size_t len)
{
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t part = nl ? (size_t)(nl - data) : len;
        if (!c->overlong && c->inlen + part >= MAX_LINE) {
            /* Refuse the whole line rather than relay a piece of it: a cut line is a
             * corrupted message. Its remaining bytes are dropped up to its newline. */
            static const char refusal[] = "! line too long\n";
            enqueue(c, refusal, sizeof refusal - 1);
            c->overlong = 1;
            c->inlen = 0;
        }
        if (!c->overlong) {
            memcpy(c->in + c->inlen, data, part);
            c->inlen += part;
        }
        if (nl == NULL)
            return;
        if (c->overlong)
            c->overlong = 0;
        else
            relay_line(c);
        data += part + 1;
        len -= part + 1;
    }
}

static void on_readable(struct client *c)
{
    char buf[RECV_BUF];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n < 0) {
        if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
            c->dead = 1;
        return;
    }
    if (n == 0) {
        /* EOF: the client is done sending (it may still be reading: it half-closed).
         * An unterminated last line is still a line; then the queue is flushed and
         * only then the connection closed, so the client gets everything owed to it. */
        if (c->inlen > 0 && !c->overlong)
            relay_line(c);
        c->closing = 1;
        return;
    }
    if (PER_CHUNK)
        broadcast(c, buf, (size_t)n); /* the bug: a chunk is not a line */
    else
        take_bytes(c, buf, (size_t)n);
}

static void on_accept(int listener, int *next_id)
{
    int fd = accept(listener, NULL, NULL);
    if (fd < 0)
        return; /* the peer left before we got to it, or EMFILE: nothing to do */
    for (int i = 0; i < MAX_CLIENTS; i++) {
        struct client *c = &clients[i];
        if (c->fd < 0) {
            set_nonblocking(fd);
            c->fd = fd;
            c->id = ++*next_id;
            c->inlen = c->outoff = c->outlen = 0;
            c->overlong = c->closing = c->dead = 0;
            return;
        }
    }
    static const char full[] = "! server full\n";
    if (send(fd, full, sizeof full - 1, MSG_NOSIGNAL) < 0) {
        /* It is being turned away anyway. */
    }
    close(fd);
}

static void close_client(struct client *c)
{
    close(c->fd);
    c->fd = -1;
    free(c->out);
    c->out = NULL;
    c->outcap = 0;
}

/* Bind to HOST:PORT (any address family getaddrinfo offers); exit 2 if impossible. */
static int open_listener(const char *host, const char *port)
{
    struct addrinfo hints, *res, *ai;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE; /* host NULL: all interfaces */
    int err = getaddrinfo(host, port, &hints, &res);
    if (err != 0) {
        fprintf(stderr, "server: %s:%s: %s\n", host ? host : "*", port, gai_strerror(err));
        exit(2);
    }
    int fd = -1, saved = 0;
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        /* A restarted server must not wait for the old connections' TIME_WAIT. */
        int on = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        fprintf(stderr, "server: cannot listen on %s:%s: %s\n", host ? host : "*", port,
                strerror(saved));
        exit(2);
    }
    return fd;
}

/* Print "listening on HOST:PORT" with the port the kernel really gave (PORT may be 0). */
static void announce(int listener)
{
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    char host[256], port[32]; /* NI_MAXHOST is not POSIX; a numeric address fits */
    if (getsockname(listener, (struct sockaddr *)&addr, &len) != 0 ||
        getnameinfo((struct sockaddr *)&addr, len, host, sizeof host, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        fprintf(stderr, "server: cannot read the listening address\n");
        exit(2);
    }
    printf("listening on %s:%s\n", host, port);
    fflush(stdout); /* stdout is a pipe for scripts: it would sit in the buffer */
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3 || strspn(argv[1], "0123456789") != strlen(argv[1]) ||
        strlen(argv[1]) > 5 || atoi(argv[1]) > 65535) {
        fprintf(stderr, "usage: server PORT [HOST]   (PORT 0-65535, 0: any free port)\n");
        return 2;
    }
    int listener = open_listener(argc == 3 ? argv[2] : NULL, argv[1]);
    set_nonblocking(listener); /* a client that resets before accept() must not block us */

    if (pipe(signal_pipe) != 0) {
        perror("server: pipe");
        return 2;
    }
    set_nonblocking(signal_pipe[1]);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* a vanished peer is an EPIPE to handle, not a death */

    for (int i = 0; i < MAX_CLIENTS; i++)
        clients[i].fd = -1;
    announce(listener);

    static struct pollfd fds[2 + MAX_CLIENTS];
    static struct client *owner[2 + MAX_CLIENTS];
    int next_id = 0;
    for (;;) {
        fds[0] = (struct pollfd){.fd = listener, .events = POLLIN};
        fds[1] = (struct pollfd){.fd = signal_pipe[0], .events = POLLIN};
        nfds_t n = 2;
        for (int i = 0; i < MAX_CLIENTS; i++) {
            struct client *c = &clients[i];
            if (c->fd < 0)
                continue;
            /* A closing client is not read any more, only flushed. */
            short events = (short)((c->closing ? 0 : POLLIN) |
                                   (c->outlen > c->outoff ? POLLOUT : 0));
            fds[n] = (struct pollfd){.fd = c->fd, .events = events};
            owner[n++] = c;
        }
        if (poll(fds, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("server: poll");
            return 1;
        }
        if (fds[1].revents)
            break; /* SIGTERM or SIGINT */
        for (nfds_t i = 2; i < n; i++)
            if (fds[i].revents & (POLLIN | POLLHUP | POLLERR))
                on_readable(owner[i]); /* reading is how a hang-up or an error is learned */
        if (fds[0].revents & POLLIN)
            on_accept(listener, &next_id);
        /* Send once per client per turn, after all reading: the lines of a whole turn
         * go out in one send() rather than one each. What the socket cannot take now
         * waits in the queue for POLLOUT. */
        for (int i = 0; i < MAX_CLIENTS; i++) {
            struct client *c = &clients[i];
            if (c->fd < 0)
                continue;
            flush_client(c);
            if (c->dead || (c->closing && c->outoff == c->outlen))
                close_client(c);
        }
    }
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (clients[i].fd >= 0)
            close_client(&clients[i]);
    close(listener);
    return 0;
}
