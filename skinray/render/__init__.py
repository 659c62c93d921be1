"""What people look at: plots and the self-contained HTML pages."""
