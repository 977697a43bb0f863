/* The floor under the CPU figures of `cargo bench --bench ingest`: the least a process can spend
 * per request on this machine's loopback. One thread, one epoll set, no framework, no allocation
 * per request, no parsing beyond finding the end of the request: it reads a request (its
 * Content-Length body too, whether it comes with the head or after it), then answers
 *   - a validationToken query parameter: 200 with the token echoed, as the handshake wants;
 *   - a SOAP body (a `SendNotification`): 200 with a fixed `SendNotificationResult` OK;
 *   - any other POST (a Graph notification): 202 with no body;
 *   - anything else (such as /readyz): 200 with no body;
 * and goes back to epoll_wait. It stores nothing, so run against it the harness reports
 * "rows stored 0": only its CPU per request is meaningful, as the kernel's share of the same
 * exchange.
 *
 *   cc -O2 -o /tmp/echo-floor benches/floor/echo-floor.c
 *   printf '#!/bin/sh\ncase "$1" in migrate) exec %s/release/rooms-sync "$@";; esac\nexec /tmp/echo-floor\n' "${CARGO_TARGET_DIR:-$PWD/target}" > /tmp/floor.sh
 *   chmod +x /tmp/floor.sh
 *   BENCH_SERVICE_BIN=/tmp/floor.sh BENCH_ONLY=validation cargo bench --bench ingest   (or graph, ews)
 *
 * (the harness migrates its database with the service binary first). It reads ListenAddress;
 * it is not a web server (one request in flight per connection, no chunked bodies), only a
 * measuring stick. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536
#define BUFFER 65536

/* Per connection: the request read so far (head and body), and how much of it is buffered. */
static char *pending[MAX_FD];
static size_t pending_len[MAX_FD];

static const char soap_ok[] =
    "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
    "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" "
    "xmlns:m=\"http://schemas.microsoft.com/exchange/services/2006/messages\">\n"
    "  <s:Body>\n    <m:SendNotificationResult>\n"
    "      <m:SubscriptionStatus>OK</m:SubscriptionStatus>\n"
    "    </m:SendNotificationResult>\n  </s:Body>\n</s:Envelope>\n";

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

static void drop_connection(int fd) {
    close(fd);
    pending_len[fd] = 0;
}

/* The request's total length once its head is complete, or 0 while it is not. */
static size_t request_length(const char *in, size_t len) {
    const char *head_end = memmem(in, len, "\r\n\r\n", 4);
    if (!head_end) return 0;
    size_t head = (size_t)(head_end - in) + 4, body = 0;
    for (const char *line = strstr(in, "\r\n"); line && line < head_end; line = strstr(line + 2, "\r\n"))
        if (strncasecmp(line + 2, "content-length:", 15) == 0) body = strtoul(line + 17, NULL, 10);
    return head + body;
}

static void answer(int fd, const char *in, size_t head_and_body) {
    char out[2048];
    int size;
    const char *token = strstr(in, "validationToken=");
    const char *line_end = strstr(in, "\r\n");
    if (token && line_end && token < line_end) {
        token += 16;
        const char *end = strpbrk(token, " &");
        int length = end ? (int)(end - token) : 0;
        size = snprintf(out, sizeof out,
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n"
                        "content-length: %d\r\n\r\n%.*s", length, length, token);
    } else if (memmem(in, head_and_body, "SendNotification", 16)) {
        size = snprintf(out, sizeof out,
                        "HTTP/1.1 200 OK\r\ncontent-type: text/xml; charset=utf-8\r\n"
                        "content-length: %zu\r\n\r\n%s", sizeof soap_ok - 1, soap_ok);
    } else if (strncmp(in, "POST ", 5) == 0) {
        size = snprintf(out, sizeof out, "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n");
    } else {
        size = snprintf(out, sizeof out, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    }
    if (send(fd, out, (size_t)size, MSG_NOSIGNAL) < 0) drop_connection(fd);
}

int main(void) {
    const char *address = getenv("ListenAddress");
    int listener = address ? listen_on(address) : -1;
    if (listener < 0) { fprintf(stderr, "echo-floor: set ListenAddress=127.0.0.1:PORT\n"); return 2; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener}, events[64];
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    for (;;) {
        int n = epoll_wait(ep, events, 64, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int c, one = 1;
                while ((c = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAX_FD) { close(c); continue; }
                    if (!pending[c] && !(pending[c] = malloc(BUFFER))) { close(c); continue; }
                    pending_len[c] = 0;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            char *in = pending[fd];
            ssize_t got = recv(fd, in + pending_len[fd], BUFFER - 1 - pending_len[fd], 0);
            if (got <= 0) { drop_connection(fd); continue; }
            pending_len[fd] += (size_t)got;
            in[pending_len[fd]] = 0;
            size_t whole = request_length(in, pending_len[fd]);
            if (whole == 0 || whole > BUFFER - 1) {
                /* Head incomplete: wait for more; a request this tool cannot hold: hang up. */
                if (pending_len[fd] >= BUFFER - 1 || whole > BUFFER - 1) drop_connection(fd);
                continue;
            }
            if (pending_len[fd] < whole) continue;
            answer(fd, in, whole);
            pending_len[fd] = 0;
        }
    }
}
