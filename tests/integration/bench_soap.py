"""Throughput of the NetSuite emulator and of the SOAP connector (not collected by pytest).

    .venv/bin/python -m tests.integration.bench_soap emulator 1000000
    .venv/bin/python -m tests.integration.bench_soap connector 100000
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import sys
import threading
import time
import uuid

import requests
import yaml
from werkzeug.serving import WSGIRequestHandler, make_server

from connectors.erp_soap import SoapConnector
from connectors.sandbox.book import Book
from connectors.sandbox.netsuite import SANDBOX_CREDENTIALS as C, make_app
from tests.integration.test_erp_soap import PRESET_PATH


class Quiet(WSGIRequestHandler):
    def log_request(self, *a, **k):
        pass


def serve(book):
    server = make_server("127.0.0.1", 0, make_app(book), threaded=True, request_handler=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def envelope(body):
    nonce, ts = uuid.uuid4().hex, str(int(time.time()))
    base = "&".join([C["account"], C["consumer_key"], C["token_id"], nonce, ts])
    sig = base64.b64encode(hmac.new(f'{C["consumer_secret"]}&{C["token_secret"]}'.encode(), base.encode(),
                                    hashlib.sha256).digest()).decode()
    return (f'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xmlns:m="urn:messages_2023_2.platform.webservices.netsuite.com" '
            f'xmlns:c="urn:core_2023_2.platform.webservices.netsuite.com" '
            f'xmlns:cm="urn:common_2023_2.platform.webservices.netsuite.com"><s:Header><m:tokenPassport>'
            f'<c:account>{C["account"]}</c:account><c:consumerKey>{C["consumer_key"]}</c:consumerKey>'
            f'<c:token>{C["token_id"]}</c:token><c:nonce>{nonce}</c:nonce><c:timestamp>{ts}</c:timestamp>'
            f'<c:signature algorithm="HMAC-SHA256">{sig}</c:signature></m:tokenPassport>'
            f'<m:searchPreferences><m:pageSize>1000</m:pageSize></m:searchPreferences></s:Header>'
            f'<s:Body>{body}</s:Body></s:Envelope>').encode()


def bench_emulator(n: int) -> None:
    t = time.time()
    book = Book(customers=max(200, n // 50), invoices=n)
    print(f"book of {n} invoices generated in {time.time() - t:.1f}s", flush=True)
    if "--freeze" in sys.argv:  # keep the book's millions of objects out of the cyclic GC's full passes
        import gc
        gc.freeze()
    server, url = serve(book)
    session = requests.Session()
    endpoint = url + "/services/NetSuitePort_2023_2"
    for label in ("first pass (render)", "second pass (cached)"):
        t = time.time()
        r = session.post(endpoint, data=envelope(
            '<m:search><m:searchRecord xsi:type="cm:TransactionSearchBasic"><cm:type operator="anyOf">'
            '<c:searchValue>_invoice</c:searchValue></cm:type></m:searchRecord></m:search>'))
        text = r.text
        sid = text.split("<platformCore:searchId>")[1].split("<")[0]
        pages = int(text.split("<platformCore:totalPages>")[1].split("<")[0])
        count, size = text.count('xsi:type="tranSales:Invoice"'), len(r.content)
        for page in range(2, pages + 1):
            r = session.post(endpoint, data=envelope(
                f"<m:searchMoreWithId><m:searchId>{sid}</m:searchId><m:pageIndex>{page}</m:pageIndex>"
                f"</m:searchMoreWithId>"))
            count += r.text.count('xsi:type="tranSales:Invoice"')
            size += len(r.content)
        took = time.time() - t
        print(f"emulator {label}: {count} invoices in {pages} pages, {size / 1e6:.0f} MB, {took:.1f}s, "
              f"{count / took:,.0f} records/s", flush=True)
    server.shutdown()


def _serve_forever(n: int, queue) -> None:
    server, url = serve(Book(customers=max(200, n // 50), invoices=n))
    queue.put(url)
    threading.Event().wait()


def bench_connector(n: int) -> None:
    """The emulator runs in a child process so that client and server do not share one GIL."""
    import multiprocessing

    queue = multiprocessing.Queue()
    child = multiprocessing.Process(target=_serve_forever, args=(n, queue), daemon=True)
    child.start()
    url = queue.get(timeout=600)
    preset = yaml.safe_load(PRESET_PATH.read_text())
    try:
        for label in ("cold emulator cache", "warm emulator cache"):
            conn = SoapConnector(preset, C, endpoint=url + "/services/NetSuitePort_2023_2")
            t = time.time()
            count = sum(len(p.records) for p in conn.pull("invoice", None))
            took = time.time() - t
            print(f"connector ({label}): {count} invoices in {took:.1f}s, {count / took:,.0f} records/s",
                  flush=True)
            conn.close()
    finally:
        child.terminate()
        child.join()


if __name__ == "__main__":
    what, n = sys.argv[1], int(sys.argv[2])
    (bench_emulator if what == "emulator" else bench_connector)(n)
