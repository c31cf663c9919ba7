#!/usr/bin/env bash
# The browser test drives Debian's chromium; install it when missing (root, as on CI), say so otherwise.
set -u
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = "0" ]; then
    echo "installing Debian chromium for the browser test"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
        && exit 0
fi
echo "chromium is missing and could not be installed: the browser test will fail in CI (sudo apt-get install chromium)" >&2
exit 0
