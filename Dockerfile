# The platform's image: one command, `flespi`, for every role (docs/deployment.md).
#
#   deploy/base-image.sh base     # flespi/base:bookworm, from Debian packages (once)
#   deploy/build.sh               # the wheels on the host, then this build (no network needed)
#
# Configured only by the environment (docs/configuration.md); it writes only below
# /var/lib/flespi (FLESPI_STATE_DIR: the first admin's password, metrics files, the calc worker's
# caches in CALC_DATA_DIR, a broker's sessions and retained messages in mqtt/). A volume
# mounted on one of these directories starts owned by the flespi user (uid 10001).

# The dependencies, in a venv whose layer stays the same from one release to the next as long as
# their pins do: only the wheels built on the host, no index (a missing one fails the build
# instead of reaching for the network).
FROM flespi/base:bookworm AS dependencies
LABEL org.flespi.stage=install
COPY deploy/build/wheels /wheels
RUN python3 -m venv /opt/flespi \
    && /opt/flespi/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --no-warn-script-location /wheels/*.whl \
    && echo /opt/flespi-platform >/opt/flespi/lib/python3.11/site-packages/flespi-platform.pth

# The platform itself, apart: a release changes a layer of a few MB, not the whole venv.
FROM dependencies AS platform
COPY deploy/build/platform /platform
RUN /opt/flespi/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check \
        --no-warn-script-location --target /opt/flespi-platform /platform/*.whl \
    && /opt/flespi/bin/pip check \
    && /opt/flespi/bin/python -c 'import numpy, orjson, psycopg, pydantic_core; psycopg.pq.version()' \
    && /opt/flespi-platform/bin/flespi --help >/dev/null

# The dependencies without pip, which the running platform never needs.
FROM dependencies AS runtime
RUN /opt/flespi/bin/pip uninstall --yes --quiet pip

FROM flespi/base:bookworm
# A fixed uid and gid, so that volumes and files on the hosts have one owner everywhere.
RUN groupadd --system --gid 10001 flespi \
    && useradd --system --uid 10001 --gid flespi --home-dir /var/lib/flespi --shell /usr/sbin/nologin flespi \
    && install -d -o flespi -g flespi -m 0750 /var/lib/flespi /var/lib/flespi/calc /var/lib/flespi/metrics \
        /var/lib/flespi/mqtt
COPY --from=runtime /opt/flespi /opt/flespi
COPY --from=platform /opt/flespi-platform /opt/flespi-platform
ENV PATH=/opt/flespi-platform/bin:/opt/flespi/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLESPI_STATE_DIR=/var/lib/flespi \
    CALC_DATA_DIR=/var/lib/flespi/calc \
    METRICS_DIR=/var/lib/flespi/metrics \
    PORT=8000
USER flespi:flespi
WORKDIR /var/lib/flespi
EXPOSE 8000
ENTRYPOINT ["tini", "--", "flespi"]
CMD ["web"]
