// Reads every named channel given until each ends, waiting on all of them at once
// with poll(); prints each channel's name and the lines it carried, in the order
// given, and the largest number of channels found ready at once.
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int count = argc - 1;
    struct pollfd fds[16];
    long lines[16] = {0};
    if (count < 1 || count > 16) {
        fprintf(stderr, "usage: merge CHANNEL...\n");
        return 2;
    }
    for (int i = 0; i < count; i++) {
        char path[128];
        snprintf(path, sizeof path, "/channels/%s", argv[i + 1]);
        fds[i].fd = open(path, O_RDONLY);
        fds[i].events = POLLIN;
        if (fds[i].fd < 0) {
            perror(path);
            return 1;
        }
    }
    int open_left = count, most_ready = 0;
    char buf[8192];
    while (open_left > 0) {
        int ready = poll(fds, count, -1);
        if (ready <= 0) {
            perror("poll");
            return 1;
        }
        if (ready > most_ready) most_ready = ready;
        for (int i = 0; i < count; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
            ssize_t n = read(fds[i].fd, buf, sizeof buf);
            if (n < 0) {
                perror("read");
                return 1;
            }
            if (n == 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_left--;
                continue;
            }
            for (ssize_t k = 0; k < n; k++) lines[i] += buf[k] == '\n';
        }
    }
    for (int i = 0; i < count; i++) printf("%s %ld\n", argv[i + 1], lines[i]);
    fprintf(stderr, "at most %d ready at once\n", most_ready);
    return 0;
}
