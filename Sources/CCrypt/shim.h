#ifndef GATEHOUSE_CCRYPT_SHIM_H
#define GATEHOUSE_CCRYPT_SHIM_H
#include <crypt.h>
#include <openssl/md5.h>
#include <openssl/sha.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#endif
