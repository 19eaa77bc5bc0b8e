// Waking an event loop from a native thread: one byte written to a socket
// whose other end the loop reads (the write end of a socket.socketpair()
// made in Python). A socket, not a pipe, so that every asyncio loop can read
// it (loop.sock_recv works on the selector loops and on Windows' proactor).
#pragma once

#include <cstdint>

namespace step35 {

// Write one byte to `sock` (a file descriptor, or a SOCKET handle on
// Windows) without blocking; false when it could not (the socket is full or
// closed). Any thread, no GIL needed.
bool send_wakeup(int64_t sock);

}  // namespace step35
