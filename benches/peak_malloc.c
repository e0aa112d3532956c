/* Counts the bytes a process has in use through malloc and friends, for
 * benches/torch_memory.py (loaded with LD_PRELOAD by scripts/compare-memory.sh): the
 * PyTorch side of benches/memory.rs, whose Rust allocator counts the same way. Sizes are
 * malloc_usable_size's. glibc only (it forwards to the __libc_* functions). */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stddef.h>

extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void __libc_free(void*);
extern void* __libc_memalign(size_t, size_t);

static _Atomic long in_use = 0, peak = 0;

static void grew(long n) {
    long now = atomic_fetch_add(&in_use, n) + n;
    long p = atomic_load(&peak);
    while (now > p && !atomic_compare_exchange_weak(&peak, &p, now)) {
    }
}

void* malloc(size_t n) {
    void* p = __libc_malloc(n);
    if (p) grew((long)malloc_usable_size(p));
    return p;
}
void* calloc(size_t a, size_t b) {
    void* p = __libc_calloc(a, b);
    if (p) grew((long)malloc_usable_size(p));
    return p;
}
void free(void* p) {
    if (p) {
        grew(-(long)malloc_usable_size(p));
        __libc_free(p);
    }
}
void* realloc(void* q, size_t n) {
    long old = q ? (long)malloc_usable_size(q) : 0;
    void* p = __libc_realloc(q, n);
    if (p) grew((long)malloc_usable_size(p) - old);
    else if (q && n == 0) grew(-old);
    return p;
}
void* memalign(size_t a, size_t n) {
    void* p = __libc_memalign(a, n);
    if (p) grew((long)malloc_usable_size(p));
    return p;
}
void* aligned_alloc(size_t a, size_t n) { return memalign(a, n); }
int posix_memalign(void** out, size_t a, size_t n) {
    void* p = memalign(a, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
void* valloc(size_t n) { return memalign(4096, n); }

/* Bytes in use now, and their peak since the last reset. */
long peak_malloc_in_use(void) { return atomic_load(&in_use); }
long peak_malloc_peak(void) { return atomic_load(&peak); }
void peak_malloc_reset(void) { atomic_store(&peak, atomic_load(&in_use)); }
