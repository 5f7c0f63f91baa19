"""codetransfer.probes"""
