/* A stand-in for Windows' bcryptprimitives.dll, for running the Windows build under a Wine
 * that lacks it (Debian's Wine 8.0): Rust's std takes its random numbers from ProcessPrng,
 * which real Windows 10+ has. Here it is RtlGenRandom (advapi32's SystemFunction036), which
 * every Wine has. Only for tests: real Windows ships the real DLL. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

/* Never fails on Windows (documented); returns TRUE like it. RtlGenRandom takes a ULONG
 * length, so larger requests go in pieces. */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
