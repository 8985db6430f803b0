/* A library module (built with -mexec-model=reactor): no main; the host calls `_initialize`,
 * then the exports below, which print through stdio and keep state between calls. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *journal;
static size_t used, cap;

/* Appends a line to the journal kept in linear memory across calls. */
static void remember(const char *line) {
    size_t n = strlen(line);
    if (used + n + 1 > cap) {
        cap = (used + n + 1) * 2;
        journal = realloc(journal, cap);
    }
    memcpy(journal + used, line, n + 1);
    used += n;
}

/* Sums the squares of 1..n, printing each step (each printf line is flushed at once, an
 * fd_write per step); returns the sum. */
__attribute__((export_name("squares"))) long long squares(int n) {
    long long sum = 0;
    char line[48];
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 1; i <= n; i++) {
        sum += (long long)i * i;
        snprintf(line, sizeof line, "square %d -> %lld\n", i, sum);
        fputs(line, stdout);
        remember(line);
    }
    return sum;
}

/* Prints the journal, and gives its length scaled by `factor`. */
__attribute__((export_name("replay"))) double replay(double factor) {
    fprintf(stderr, "replaying %zu bytes\n", used);
    fwrite(journal ? journal : "", 1, used, stdout);
    return (double)used * factor;
}
