// Copies stdin to stdout in upper case, after a prompt that must appear first.
#include <ctype.h>
#include <stdio.h>

int main(void) {
    printf("ready> ");
    fflush(stdout);
    int c;
    long n = 0;
    while ((c = getchar()) != EOF) {
        putchar(toupper(c));
        n++;
    }
    fprintf(stderr, "%ld bytes\n", n);
    return 0;
}
