// Reads lines from `input.txt` in its first preopened directory, one at a time, and
// for each computes for a while with live floating-point state, then prints the line
// and the running value, flushed, so that a checkpoint can land between any two.
#include <stdio.h>

int main(void) {
    FILE *input = fopen("data/input.txt", "r");
    if (input == NULL) {
        perror("data/input.txt");
        return 2;
    }
    // Unbuffered, so that the file offset is exactly where the program stands.
    setvbuf(input, NULL, _IONBF, 0);
    char line[64];
    double x = 1.0;
    while (fgets(line, sizeof line, input) != NULL) {
        for (long j = 0; j < 20000000; j++) {
            x = x * 1.0000001 + 0.5;
        }
        printf("%.17g %s", x, line);
        fflush(stdout);
    }
    return 0;
}
