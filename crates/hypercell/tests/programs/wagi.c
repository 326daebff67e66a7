// A WAGI handler with a route per behaviour the server must cope with, chosen by the
// request's path: well-behaved answers (echo, environment, counter, redirect, status)
// and handlers that trap, loop, exhaust memory, write too much or break the protocol.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

// Requests this cell's memory has served: 1 in a fresh cell.
static int served;

static uint64_t fnv1a(const unsigned char *data, size_t len) {
    uint64_t hash = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        hash ^= data[i];
        hash *= 0x100000001b3ull;
    }
    return hash;
}

// The request body, read to its end.
static unsigned char *read_body(size_t *len) {
    size_t cap = 1 << 16, used = 0;
    unsigned char *body = malloc(cap);
    for (;;) {
        if (used == cap) {
            cap *= 2;
            body = realloc(body, cap);
        }
        ssize_t n = read(0, body + used, cap - used);
        if (n <= 0) break;
        used += n;
    }
    *len = used;
    return body;
}

static int exists(const char *path) {
    FILE *file = fopen(path, "r");
    if (file) fclose(file);
    return file != NULL;
}

int main(int argc, char **argv) {
    const char *path = getenv("PATH_INFO");
    if (!path) path = "";
    served++;
    if (!strcmp(path, "/count")) {
        printf("Content-Type: text/plain\n\n%d\n", served);
    } else if (!strcmp(path, "/echo")) {
        size_t len;
        unsigned char *body = read_body(&len);
        const char *declared = getenv("CONTENT_LENGTH");
        printf("Content-Type: application/octet-stream\nX-Body-Length: %zu\n"
               "X-Declared-Length: %s\nX-Body-Hash: %016llx\n\n",
               len, declared ? declared : "", (unsigned long long)fnv1a(body, len));
        fwrite(body, 1, len, stdout);
    } else if (!strncmp(path, "/env", 4)) {
        printf("Content-Type: text/plain; charset=utf-8\n\n");
        for (char **var = environ; *var; var++) printf("env %s\n", *var);
        for (int i = 0; i < argc; i++) printf("arg%d %s\n", i, argv[i]);
    } else if (!strcmp(path, "/redirect")) {
        printf("Location: /count\n\n");
    } else if (!strcmp(path, "/missing")) {
        printf("Status: 404 Not Found\nContent-Type: text/plain\nX-Why: no route\n\nnothing here\n");
    } else if (!strcmp(path, "/nocontent")) {
        printf("Status: 204 No Content\n\n");
    } else if (!strcmp(path, "/stderr")) {
        fprintf(stderr, "a warning from the handler\n");
        printf("Content-Type: text/plain\n\nwarned\n");
    } else if (!strcmp(path, "/trap")) {
        printf("Content-Type: text/plain\n\nhalf a resp");
        fflush(stdout);
        __builtin_trap();
    } else if (!strcmp(path, "/loop")) {
        for (volatile unsigned long i = 0;; i++) {
        }
    } else if (!strcmp(path, "/bomb")) {
        // Each block links to the last, so none can be optimised away.
        void **last = NULL;
        for (;;) {
            void **block = malloc(1 << 20);
            if (!block) abort();
            memset(block, 1, 1 << 20);
            *block = last;
            last = block;
            served += ((char *)block)[4096];
        }
    } else if (!strcmp(path, "/big")) {
        long bytes = argc > 1 ? atol(argv[1]) : 0;
        printf("Content-Type: application/octet-stream\n\n");
        for (long i = 0; i < bytes; i++) putchar('a' + i % 26);
    } else if (!strcmp(path, "/noheaders")) {
        printf("just some text, no headers\n");
    } else if (!strcmp(path, "/notype")) {
        printf("X-Thing: yes\n\nno content type\n");
    } else if (!strcmp(path, "/exit3")) {
        printf("Content-Type: text/plain\n\nfailing\n");
        return 3;
    } else if (!strcmp(path, "/wait")) {
        // Says it started, in the directory granted as /data, and waits until the
        // test releases it.
        FILE *started = fopen("/data/started", "w");
        if (started) fclose(started);
        while (!exists("/data/release")) {
            struct timespec tick = {0, 5000000};
            nanosleep(&tick, NULL);
        }
        printf("Content-Type: text/plain\n\nreleased\n");
    } else {
        printf("Content-Type: text/plain\n\nhello from %s\n", path);
    }
    return 0;
}
