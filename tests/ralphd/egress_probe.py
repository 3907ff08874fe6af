#!/usr/bin/python3
# The agents' tool in ralphd_egress_test (ralphd --agent-program
# PROFILE=<this>): reads its prompt (the last argument) as a list of
# destinations and reports, one line each on stdout, what the job's network
# let it do:
#   NAME         ask the job's resolver (/etc/resolv.conf) for NAME's A record
#                over UDP, then connect to the first address on port 443:
#                "NAME rcode=REFUSED", "NAME ADDRESS hello",
#                "NAME ADDRESS connect-failed", "NAME no-resolver",
#                "NAME dns-failed"
#   @ADDRESS     connect to ADDRESS:443 without asking anyone:
#                "@ADDRESS hello", "@ADDRESS connect-failed"
# Its own DNS client, so a refusal is told apart from a failure.
import os
import socket
import struct
import sys

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def resolver():
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    return fields[1]
    except OSError:
        pass
    return None


def skip_name(data, at):
    while True:
        length = data[at]
        if length & 0xC0 == 0xC0:
            return at + 2
        at += 1
        if length == 0:
            return at
        at += length


def query_a(server, name):
    """(rcode name, [addresses]) of an A query for name."""
    qid = struct.unpack("!H", os.urandom(2))[0]
    message = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        message += bytes([len(label)]) + label.encode()
    message += b"\0" + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(message, (server, 53))
        data = s.recv(4096)
    if struct.unpack("!H", data[:2])[0] != qid:
        return "wrong-id", []
    rcode = RCODES.get(data[3] & 0x0F, str(data[3] & 0x0F))
    questions, answers = struct.unpack("!HH", data[4:8])
    at = 12
    for _ in range(questions):
        at = skip_name(data, at) + 4
    addresses = []
    for _ in range(answers):
        at = skip_name(data, at)
        rtype, _, _, length = struct.unpack("!HHIH", data[at:at + 10])
        at += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(data[at:at + 4]))
        at += length
    return rcode, addresses


def connect(address):
    try:
        with socket.create_connection((address, 443), timeout=5) as s:
            return s.recv(64).decode().strip()
    except OSError:
        return "connect-failed"


def main():
    server = resolver()
    for item in sys.argv[-1].split():
        if item.startswith("@"):
            print(f"{item} {connect(item[1:])}", flush=True)
            continue
        if server is None:
            print(f"{item} no-resolver", flush=True)
            continue
        try:
            rcode, addresses = query_a(server, item)
        except OSError:
            print(f"{item} dns-failed", flush=True)
            continue
        if rcode != "NOERROR" or not addresses:
            print(f"{item} rcode={rcode}", flush=True)
            continue
        print(f"{item} {addresses[0]} {connect(addresses[0])}", flush=True)


main()
