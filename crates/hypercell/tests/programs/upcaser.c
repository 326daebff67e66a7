// Serves the named channel `requests` until its writer closes it: waits for input with
// poll(), then writes what it read, in capitals, to `replies`. Prints the bytes served.
#include <ctype.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <unistd.h>

int main(void) {
    int requests = open("/channels/requests", O_RDONLY);
    int replies = open("/channels/replies", O_WRONLY);
    if (requests < 0 || replies < 0) {
        perror("open /channels");
        return 1;
    }
    long served = 0;
    char buf[4096];
    for (;;) {
        struct pollfd ready = {.fd = requests, .events = POLLIN};
        if (poll(&ready, 1, -1) != 1) {
            perror("poll");
            return 1;
        }
        ssize_t n = read(requests, buf, sizeof buf);
        if (n < 0) {
            perror("read requests");
            return 1;
        }
        if (n == 0) break;
        for (ssize_t i = 0; i < n; i++) buf[i] = (char)toupper((unsigned char)buf[i]);
        if (write(replies, buf, n) != n) {
            perror("write replies");
            return 1;
        }
        served += n;
    }
    close(replies);
    printf("served %ld bytes\n", served);
    return 0;
}
