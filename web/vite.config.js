// The page is built once into dist/ (served by the ingress): small index.html, every asset under
// /assets/ named by its content hash, so the ingress can cache assets for a year.
import { defineConfig } from 'vite';

export default defineConfig({
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    emptyOutDir: true,
    sourcemap: false,
    assetsInlineLimit: 0, // no data: URLs in scripts or styles: the CSP allows 'self' only
    modulePreload: { polyfill: false }, // the polyfill is an inline script, which the CSP refuses
    chunkSizeWarningLimit: 2000,
  },
});
