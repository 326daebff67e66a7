// Prints each environment variable as [NAME=VALUE].
#include <stdio.h>

extern char **environ;

int main(void) {
    for (char **entry = environ; *entry != NULL; entry++) {
        printf("[%s]\n", *entry);
    }
    return 0;
}
