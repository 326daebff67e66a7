// Prints what makes a cell itself: its arguments, environment, 8 random bytes, a line
// of `d/hello.txt` in its preopened directory, and the realtime clock.
#include <stdio.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        printf("arg %s\n", argv[i]);
    }
    for (char **entry = environ; *entry != NULL; entry++) {
        printf("env %s\n", *entry);
    }
    unsigned char random[8];
    getentropy(random, sizeof random);
    printf("random ");
    for (int i = 0; i < 8; i++) {
        printf("%02x", random[i]);
    }
    printf("\n");
    FILE *file = fopen("d/hello.txt", "r");
    char line[64];
    if (file != NULL && fgets(line, sizeof line, file) != NULL) {
        printf("file %s", line);
    } else {
        printf("no file\n");
    }
    printf("time %lld\n", (long long)time(NULL));
    return 0;
}
