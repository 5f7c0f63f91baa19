"""codetransfer.analysis"""
