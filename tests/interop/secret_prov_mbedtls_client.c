/* A secret-provisioning client on mbedTLS, written for confserve's interop tests from the protocol
 * description in docs/formats.md#sp-tls and #sp-wire (it is not Gramine's code): TLS 1.2, the server verified
 * against a CA file with the host name as listed, a client certificate and key from files, then the
 * 35-byte request and the 41-byte response header plus secret.
 *
 * usage: client HOST PORT CA_FILE CERT_FILE KEY_FILE
 * exit 0 and the secret in hex on stdout; 3 when the server closed without a byte (refused);
 * 2 on a TLS or verification error; 1 on anything else.
 */
#include <stdio.h>
#include <string.h>
#include <stdint.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

static const char REQUEST[] = "SECRET_PROVISION_RA_TLS_REQUEST_V1";        /* + NUL = 35 bytes */
static const char RESPONSE[] = "SECRET_PROVISION_RA_TLS_RESPONSE_V1:";     /* + NUL = 37 bytes */

static int read_exact(mbedtls_ssl_context* ssl, unsigned char* buf, size_t size, size_t* got) {
    *got = 0;
    while (*got < size) {
        int ret = mbedtls_ssl_read(ssl, buf + *got, size - *got);
        if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE)
            continue;
        if (ret == 0 || ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || ret == MBEDTLS_ERR_NET_CONN_RESET)
            return 0; /* closed */
        if (ret < 0)
            return ret;
        *got += (size_t)ret;
    }
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s HOST PORT CA CERT KEY\n", argv[0]);
        return 1;
    }
    mbedtls_net_context net;
    mbedtls_ssl_context ssl;
    mbedtls_ssl_config conf;
    mbedtls_x509_crt ca, own;
    mbedtls_pk_context key;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    char err[256];
    int ret, rc = 1;

    mbedtls_net_init(&net);
    mbedtls_ssl_init(&ssl);
    mbedtls_ssl_config_init(&conf);
    mbedtls_x509_crt_init(&ca);
    mbedtls_x509_crt_init(&own);
    mbedtls_pk_init(&key);
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);

    if ((ret = mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, NULL, 0)) != 0)
        goto fail;
    if ((ret = mbedtls_x509_crt_parse_file(&ca, argv[3])) != 0)
        goto fail;
    if ((ret = mbedtls_x509_crt_parse_file(&own, argv[4])) != 0)
        goto fail;
    if ((ret = mbedtls_pk_parse_keyfile(&key, argv[5], NULL)) != 0)
        goto fail;
    if ((ret = mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                           MBEDTLS_SSL_PRESET_DEFAULT)) != 0)
        goto fail;
    mbedtls_ssl_conf_max_version(&conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&conf, &ca, NULL);
    mbedtls_ssl_conf_rng(&conf, mbedtls_ctr_drbg_random, &drbg);
    if ((ret = mbedtls_ssl_conf_own_cert(&conf, &own, &key)) != 0)
        goto fail;
    if ((ret = mbedtls_ssl_setup(&ssl, &conf)) != 0)
        goto fail;
    if ((ret = mbedtls_ssl_set_hostname(&ssl, argv[1])) != 0)
        goto fail;
    if ((ret = mbedtls_net_connect(&net, argv[1], argv[2], MBEDTLS_NET_PROTO_TCP)) != 0)
        goto fail;
    mbedtls_ssl_set_bio(&ssl, &net, mbedtls_net_send, mbedtls_net_recv, NULL);
    while ((ret = mbedtls_ssl_handshake(&ssl)) != 0) {
        if (ret != MBEDTLS_ERR_SSL_WANT_READ && ret != MBEDTLS_ERR_SSL_WANT_WRITE) {
            rc = 2;
            goto fail;
        }
    }
    size_t sent = 0;
    while (sent < sizeof(REQUEST)) {
        ret = mbedtls_ssl_write(&ssl, (const unsigned char*)REQUEST + sent, sizeof(REQUEST) - sent);
        if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE)
            continue;
        if (ret < 0)
            goto fail;
        sent += (size_t)ret;
    }
    unsigned char header[41];
    size_t got;
    if ((ret = read_exact(&ssl, header, sizeof(header), &got)) != 0) {
        rc = got == 0 ? 3 : 1;
        goto fail;
    }
    if (got == 0) {
        fprintf(stderr, "refused: connection closed without a response\n");
        rc = 3;
        goto done;
    }
    if (got != sizeof(header) || memcmp(header, RESPONSE, sizeof(RESPONSE)) != 0) {
        fprintf(stderr, "bad response header (%zu bytes)\n", got);
        goto done;
    }
    uint32_t size = ((uint32_t)header[37] << 24) | ((uint32_t)header[38] << 16) | ((uint32_t)header[39] << 8)
                    | header[40];
    if (size == 0 || size > 65536) {
        fprintf(stderr, "bad secret size %u\n", size);
        goto done;
    }
    static unsigned char secret[65536];
    if ((ret = read_exact(&ssl, secret, size, &got)) != 0 || got != size) {
        fprintf(stderr, "truncated secret\n");
        goto done;
    }
    for (uint32_t i = 0; i < size; i++)
        printf("%02x", secret[i]);
    printf("\n");
    printf("%s\n", mbedtls_ssl_get_version(&ssl));
    rc = 0;
    goto done;

fail:
    mbedtls_strerror(ret, err, sizeof(err));
    fprintf(stderr, "mbedtls error -0x%04x: %s\n", (unsigned)-ret, err);
done:
    mbedtls_ssl_close_notify(&ssl);
    mbedtls_net_free(&net);
    mbedtls_ssl_free(&ssl);
    mbedtls_ssl_config_free(&conf);
    mbedtls_x509_crt_free(&ca);
    mbedtls_x509_crt_free(&own);
    mbedtls_pk_free(&key);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    return rc;
}
