#!/usr/bin/env python3
"""How one license's cost grows with its active seats (docs/benchmarks.md, proposal 4).

Against a running cluster (`cls up`, with CLS_ADMIN_TOKEN set and high CLS_RATE_* limits), through
the public API only: creates a brand, an API key and an unlimited-seat product, then for each
size N provisions a key, activates N distinct instances on its one license (with --clients
concurrent clients), and measures one client's p50 of validate (product + an active instance),
activate (a new instance) and GET /v1/licenses/{id} at that size.

    CLS_ADMIN_TOKEN=... python3 scripts/seat-growth.py --url http://127.0.0.1:8080 1 1000 3000
    ... --clients 16      # the activations race for the license (202 past the reply timeout)

Standard library only; its own overhead (about 0.2 ms per request) is in every figure.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import statistics
import time
import urllib.parse


class Api:
    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.conn = None

    def call(self, method, path, body=None, headers=None):
        """One request on a kept-alive connection, reopened if the gateway closed it."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, None if body is None else json.dumps(body),
                                  {"content-type": "application/json", **(headers or {})})
                r = self.conn.getresponse()
                data = r.read()
                return r.status, (json.loads(data) if data else None)
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise


def expect(status, body, *allowed):
    if status not in allowed:
        raise SystemExit(f"unexpected answer {status}: {body}")
    return body


def p50_ms(call, times):
    samples = []
    for i in range(times):
        started = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients filling the license")
    parser.add_argument("sizes", nargs="+", type=int, help="active instances to measure at")
    args = parser.parse_args()
    admin = {"x-admin-token": os.environ["CLS_ADMIN_TOKEN"]}
    api = Api(args.url)
    run = "%06d" % (int(time.time() * 1000) % 1_000_000)

    brand = expect(*api.call("POST", "/v1/admin/brands",
                             {"slug": f"seat-growth-{run}", "name": "Seat growth", "key_prefix": f"SG{run}"}, admin), 201)
    key = expect(*api.call("POST", f"/v1/admin/brands/{brand['id']}/api-keys", {"name": "seat-growth"}, admin), 201)
    write = {"x-api-key": key["api_key"]}
    expect(*api.call("POST", "/v1/products", {"code": "site", "name": "Site", "default_seat_limit": None}, write), 201)

    print(f"{'instances':>9}  {'fill':>16}  {'validate p50':>12}  {'activate p50':>12}  {'GET license p50':>15}")
    for size in args.sizes:
        provisioned = expect(*api.call("POST", "/v1/licenses",
                                       {"customer_email": f"site-{size}-{run}@example.com", "products": [{"code": "site"}]}, write), 201)
        license_key, license_id = provisioned["license_key"]["key"], provisioned["licenses"][0]["id"]

        def fill(instances):
            client, accepted = Api(args.url), 0
            for i in instances:
                status, body = client.call("POST", "/v1/activations",
                                           {"license_key": license_key, "product": "site", "instance_id": f"host-{i}.example.com"})
                accepted += expect(status, body, 201, 202) and status == 202
            return accepted

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            accepted = sum(pool.map(fill, [range(c, size, args.clients) for c in range(args.clients)]))
        filled = f"{time.perf_counter() - started:5.1f} s, {accepted} × 202"

        # A 202's activation commits later: wait until the license shows every seat.
        deadline = time.monotonic() + 120
        while expect(*api.call("GET", f"/v1/licenses/{license_id}", None, write), 200)["seats_used"] < size:
            if time.monotonic() > deadline:
                raise SystemExit(f"the license did not reach {size} seats within 120 s")
            time.sleep(0.2)

        validate = p50_ms(lambda i: expect(*api.call("POST", "/v1/license-keys/validate",
                                                     {"license_key": license_key, "product": "site", "instance_id": "host-0.example.com"}), 200), 300)
        activate = p50_ms(lambda i: expect(*api.call("POST", "/v1/activations",
                                                     {"license_key": license_key, "product": "site", "instance_id": f"extra-{i}.example.com"}), 201), 40)
        read = p50_ms(lambda i: expect(*api.call("GET", f"/v1/licenses/{license_id}", None, write), 200), 40)
        print(f"{size:>9}  {filled:>16}  {validate:>9.2f} ms  {activate:>9.2f} ms  {read:>12.2f} ms")


if __name__ == "__main__":
    main()
