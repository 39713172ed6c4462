"""Cloud film (云胶片): links and PINs for patients, the printable film sheet, the phone pages."""
