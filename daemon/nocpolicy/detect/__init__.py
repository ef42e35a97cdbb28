"""passive C&C detection from resolver logs (issue 8)"""
