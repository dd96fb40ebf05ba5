/* Built by check.sh against a staged install with `pkg-config --cflags --libs pagerd-client`:
 * connects to a socket nobody listens on and prints the library's error. */
#include <pagerd/client.h>
#include <stdio.h>

int main(int argc, char** argv)
{
    pagerd_conn* conn = NULL;
    if (argc != 2) return 2;
    if (pagerd_connect(argv[1], &conn) == 0) {
        puts("pagerd_connect succeeded on a socket nobody listens on");
        pagerd_disconnect(conn);
        return 1;
    }
    const char* msg = pagerd_last_error();
    printf("pagerd_last_error: %s (code %d)\n", msg ? msg : "(null)", pagerd_last_error_code());
    return msg && *msg ? 0 : 1;
}
