"""maintenance and fault windows, notices (issue 6)"""
