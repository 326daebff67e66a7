// A program with an initialisation export, as Wizer runs them: `init` builds a table
// (the expensive part) and counts its runs; `main` reports the count, checks the table
// and echoes a line of stdin, so a cell from an `init:init` template shows that it
// started from the initialised state and read its own stdin.
#include <stdio.h>

static unsigned table[16384];
static int initialised;

__attribute__((export_name("init"))) void init(void) {
    for (unsigned i = 0; i < 16384; i++) table[i] = i * 2654435761u;
    initialised++;
}

int main(void) {
    unsigned sum = 0;
    for (unsigned i = 0; i < 16384; i++) sum += table[i];
    printf("initialised %d\n", initialised);
    printf("table %u\n", sum);
    char line[64];
    if (fgets(line, sizeof line, stdin)) printf("stdin %s", line);
    return 0;
}
