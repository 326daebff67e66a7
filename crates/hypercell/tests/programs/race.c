// Opens flip/secret.txt over and over while the host swaps `flip` between a directory
// inside the sandbox and a symlink to a directory outside it. Prints ESCAPED if it
// ever reads the outside file.
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "sandbox";
    if (chdir(dir) != 0) return 1;
    int inside = 0, refused = 0;
    for (int i = 0; i < 3000; i++) {
        int fd = open("flip/secret.txt", O_RDONLY);
        if (fd < 0) { refused++; continue; }
        char buf[32] = {0};
        read(fd, buf, sizeof buf - 1);
        close(fd);
        if (strncmp(buf, "outside", 7) == 0) { printf("ESCAPED\n"); return 1; }
        inside++;
    }
    printf("inside %d refused %d\n", inside > 0, refused > 0);
    return 0;
}
