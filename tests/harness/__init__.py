"""Test harness: real `docker-registry` processes, a test PKI, a bearer token service and
standard-library seeding helpers.

Everything here is deliberately independent from `transship` itself, so behaviour tests compare
our client against an outside implementation instead of against itself.
"""
