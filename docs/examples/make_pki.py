"""A CA and a harpd certificate for tests and trials, with txharp.testing.

Run: python make_pki.py DIRECTORY [HOSTNAME]
"""
import sys

from txharp.testing import TestPKI

directory = sys.argv[1]
hostname = sys.argv[2] if len(sys.argv) > 2 else "localhost"

pki = TestPKI(directory, dns_names=[hostname], ip_addresses=["127.0.0.1"])
print("clients trust:  ", pki.ca_file)     # ca_file= / --ca-file
print("harpd presents: ", pki.chain_file)  # network.certfile
print("harpd's key:    ", pki.key_file)    # network.keyfile
print("fingerprint:    ", pki.fingerprint)  # pins= / --known-certs
