"""What a cube says: sea-ice extent and area, climatology, fill evaluation, reports."""
