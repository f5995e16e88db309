#ifndef GATEHOUSE_CMALLOC_SHIM_H
#define GATEHOUSE_CMALLOC_SHIM_H
// glibc's malloc statistics and trimming, which Swift's Glibc module leaves out. Part of the
// C library itself: nothing to link. Elsewhere (musl, Darwin) both report "not available".
#include <stddef.h>
#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif

/// Bytes handed out by malloc and not freed (heap chunks and mmapped blocks); -1 where
/// glibc's statistics are not available.
static inline long long gatehouse_malloc_in_use(void) {
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 33)
    struct mallinfo2 info = mallinfo2();
    return (long long)(info.uordblks + info.hblkhd);
#elif defined(__GLIBC__)
    struct mallinfo info = mallinfo();
    return (long long)(unsigned int)info.uordblks + (long long)(unsigned int)info.hblkhd;
#else
    return -1;
#endif
}

/// Hands free heap pages back to the system: 1 if any were, 0 if none, -1 where not available.
static inline int gatehouse_malloc_trim(void) {
#if defined(__GLIBC__)
    return malloc_trim(0);
#else
    return -1;
#endif
}
#endif
