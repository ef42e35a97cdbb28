"""emergency priority and utilisation limits (issue 5)"""
