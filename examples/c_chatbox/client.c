/*
 * client.c - the classic "chat box using TCP/IP socket programming": a client.
 *
 *     client PORT IP
 *
 * Port first, then the server's address, as in the classic exercise. Lines typed on
 * standard input are sent to the server; lines the server relays are printed as they
 * arrive, also while you are typing. Full duplex with one poll() loop over the
 * terminal and the socket: neither direction ever waits for the other, and there is
 * no second process or thread to coordinate or to reap.
 *
 * Exit status:
 *   0  end of input (Ctrl-D, or the end of a pipe): the client half-closes
 *      (shutdown SHUT_WR) so the server sees the end, and prints what is still on its
 *      way until the server closes the connection;
 *   1  the connection could not be made, or the server closed it first (one line on
 *      stderr saying which);
 *   2  usage error.
 *
 * Build: cc -O2 -Wall -Wextra -o client client.c
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

static const char *server_ip, *server_port; /* for error messages */

/* One line on stderr, exit 1: "client: WHAT (IP:PORT)[: WHY]". */
static void die(const char *what, const char *why)
{
    fprintf(stderr, "client: %s (%s:%s)%s%s\n", what, server_ip, server_port,
            why ? ": " : "", why ? why : "");
    exit(1);
}

/* write() until all of it is out: a pipe or a socket may take only part. */
static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = fd == STDOUT_FILENO ? write(fd, data, len)
                                        : send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Connect to the first address of IP:PORT that accepts (IPv4, IPv6 or a name). */
static int connect_to(const char *ip, const char *port)
{
    struct addrinfo hints, *res, *ai;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int err = getaddrinfo(ip, port, &hints, &res);
    if (err != 0)
        die("cannot connect", gai_strerror(err));
    int fd = -1, saved = 0;
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        saved = errno;
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        die("cannot connect", strerror(saved));
    return fd;
}

int main(int argc, char **argv)
{
    if (argc != 3 || strspn(argv[1], "0123456789") != strlen(argv[1]) ||
        strlen(argv[1]) > 5 || atoi(argv[1]) < 1 || atoi(argv[1]) > 65535) {
        fprintf(stderr, "usage: client PORT IP   (PORT 1-65535, e.g. client 4242 127.0.0.1)\n");
        return 2;
    }
    server_port = argv[1];
    server_ip = argv[2];
    /* A server or a stdout reader that goes away is an error to report, not a silent
     * death by SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    int sock = connect_to(server_ip, server_port);

    /* Large enough that a pasted or piped burst takes few system calls; the server
     * reassembles lines, so where a read happens to end does not matter. */
    static char buf[65536];
    struct pollfd fds[2] = {
        {.fd = sock, .events = POLLIN},
        {.fd = STDIN_FILENO, .events = POLLIN},
    };
    int input_open = 1;
    for (;;) {
        if (poll(fds, input_open ? 2 : 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll failed", strerror(errno));
        }
        if (fds[0].revents) {
            ssize_t n = recv(sock, buf, sizeof buf, 0);
            if (n < 0 && errno != EINTR)
                die("connection lost", strerror(errno));
            if (n == 0) {
                if (!input_open)
                    return 0; /* we said we were done; the server agreed */
                die("the server closed the connection", NULL);
            }
            /* The server sends whole lines, so passing the bytes on keeps them whole. */
            if (n > 0 && write_all(STDOUT_FILENO, buf, (size_t)n) != 0)
                die("cannot write to standard output", strerror(errno));
        }
        if (input_open && fds[1].revents) {
            ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
            if (n < 0 && errno != EINTR)
                die("cannot read standard input", strerror(errno));
            if (n == 0) {
                /* Half-close: the server learns we are done but can still send what
                 * it owes us; it closes when it has, and that ends the loop. */
                shutdown(sock, SHUT_WR);
                input_open = 0;
            }
            /* A blocking send is fine here: the server never stops reading a client
             * (it queues for slow readers), so this cannot deadlock with our reading. */
            if (n > 0 && write_all(sock, buf, (size_t)n) != 0)
                die("connection lost", strerror(errno));
        }
    }
}
