"""rayhistory.operator"""
