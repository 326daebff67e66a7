// Works on files named by its arguments: `read:PATH` prints the file, `write:PATH`
// creates it with one line; each prints whether it worked, and the exit status counts
// the failures.
#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    int failures = 0;
    for (int i = 1; i < argc; i++) {
        const char *path = strchr(argv[i], ':');
        if (path == NULL) {
            continue;
        }
        path++;
        FILE *file = fopen(path, strncmp(argv[i], "read:", 5) == 0 ? "r" : "w");
        if (file == NULL) {
            printf("%s: %s\n", argv[i], strerror(errno));
            failures++;
            continue;
        }
        if (argv[i][0] == 'r') {
            char line[256];
            while (fgets(line, sizeof line, file) != NULL) {
                printf("%s: %s", argv[i], line);
            }
        } else {
            fprintf(file, "written by the cell\n");
            printf("%s: ok\n", argv[i]);
        }
        fclose(file);
    }
    return failures;
}
