// Writes TEXT and a newline COUNT times to the named channel CHANNEL.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: say CHANNEL TEXT COUNT\n");
        return 2;
    }
    char path[128];
    snprintf(path, sizeof path, "/channels/%s", argv[1]);
    int fd = open(path, O_WRONLY);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    char line[256];
    int len = snprintf(line, sizeof line, "%s\n", argv[2]);
    for (int i = 0, count = atoi(argv[3]); i < count; i++) {
        if (write(fd, line, len) != len) {
            perror("write");
            return 1;
        }
    }
    return 0;
}
