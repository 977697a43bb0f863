/* The floor under the validation-echo figure of `cargo bench --bench ingest`: the least a
 * process can spend per request on this machine's loopback. One thread, one epoll set, no
 * framework, no allocation per request: it reads a request, echoes the validationToken query
 * parameter (or answers 200 to anything else, such as /readyz) and goes back to epoll_wait.
 *
 *   cc -O2 -o /tmp/echo-floor benches/floor/echo-floor.c
 *   printf '#!/bin/sh\ncase "$1" in migrate) exec %s/target/release/rooms-sync "$@";; esac\nexec /tmp/echo-floor\n' "$PWD" > /tmp/floor.sh
 *   chmod +x /tmp/floor.sh
 *   BENCH_SERVICE_BIN=/tmp/floor.sh BENCH_ONLY=validation cargo bench --bench ingest
 *
 * (the harness migrates its database with the service binary first). It reads ListenAddress;
 * it is not a web server (no pipelining beyond one buffer, no bodies), only a measuring stick. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static int listen_on(const char *address) {
    const char *colon = strrchr(address, ':');
    if (!colon) return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
    char host[64];
    snprintf(host, sizeof host, "%.*s", (int)(colon - address), address);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 1024)) return -1;
    return fd;
}

int main(void) {
    const char *address = getenv("ListenAddress");
    int listener = address ? listen_on(address) : -1;
    if (listener < 0) { fprintf(stderr, "echo-floor: set ListenAddress=127.0.0.1:PORT\n"); return 2; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener}, events[64];
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    char in[16384], out[1024];
    for (;;) {
        int n = epoll_wait(ep, events, 64, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int c, one = 1;
                while ((c = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t got = recv(fd, in, sizeof in - 1, 0);
            if (got <= 0) { close(fd); continue; }
            in[got] = 0;
            const char *token = strstr(in, "validationToken=");
            const char *end = token ? strpbrk(token += 16, " &") : NULL;
            int length = end ? (int)(end - token) : 0;
            int size = snprintf(out, sizeof out,
                                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                "content-length: %d\r\n\r\n%.*s", length, length, token ? token : "");
            if (send(fd, out, size, MSG_NOSIGNAL) < 0) close(fd);
        }
    }
}
