"""codetransfer.trained"""
