#include "wakeup.h"

#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <winsock2.h>
#else
#include <sys/socket.h>
#endif

namespace step35 {

bool send_wakeup(int64_t sock) {
    const char byte = 1;
#ifdef _WIN32
    return ::send((SOCKET) sock, &byte, 1, 0) == 1;  // Python made the socket non-blocking
#else
#ifdef MSG_NOSIGNAL
    const int flags = MSG_DONTWAIT | MSG_NOSIGNAL;
#else
    const int flags = MSG_DONTWAIT;  // macOS: Python ignores SIGPIPE
#endif
    return ::send((int) sock, &byte, 1, flags) == 1;
#endif
}

}  // namespace step35
