// Sends COUNT requests ("msg N\n") on the named channel `requests` and reads each
// reply from `replies`, which must be the request in capitals; prints "replies COUNT
// ok", or what went wrong and exits 1.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int read_line(int fd, char *line, size_t size) {
    size_t used = 0;
    while (used + 1 < size) {
        ssize_t n = read(fd, line + used, 1);
        if (n <= 0) return -1;
        if (line[used++] == '\n') break;
    }
    line[used] = 0;
    return (int)used;
}

int main(int argc, char **argv) {
    int count = argc > 1 ? atoi(argv[1]) : 1000;
    int requests = open("/channels/requests", O_WRONLY);
    int replies = open("/channels/replies", O_RDONLY);
    if (requests < 0 || replies < 0) {
        perror("open /channels");
        return 1;
    }
    char request[64], expected[64], reply[64];
    for (int i = 0; i < count; i++) {
        int len = snprintf(request, sizeof request, "msg %d\n", i);
        if (write(requests, request, len) != len) {
            perror("write requests");
            return 1;
        }
        snprintf(expected, sizeof expected, "MSG %d\n", i);
        if (read_line(replies, reply, sizeof reply) < 0 || strcmp(reply, expected) != 0) {
            fprintf(stderr, "request %d got reply `%s`\n", i, reply);
            return 1;
        }
    }
    close(requests);
    // The server closes its end once it has read ours to the end.
    char rest;
    if (read(replies, &rest, 1) != 0) {
        fprintf(stderr, "a reply came after the last request\n");
        return 1;
    }
    printf("replies %d ok\n", count);
    return 0;
}
