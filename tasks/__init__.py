"""codetransfer.tasks"""
