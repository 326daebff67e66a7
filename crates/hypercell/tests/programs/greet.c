// Arguments, the environment, stdout and stderr, and the exit status.
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    const char *who = getenv("WHO");
    printf("hello, %s\n", who ? who : "nobody");
    fprintf(stderr, "this goes to stderr\n");
    return argc > 1 ? atoi(argv[1]) : 0;
}
