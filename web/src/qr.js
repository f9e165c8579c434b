// The QRIS code drawn on the page from the acquirer's qr_content (EMV string), as any bank app or
// e-wallet scans it. qrcode-generator: small, no dependencies, encodes; we draw the modules.
import qrcode from 'qrcode-generator';

export function qrCanvas(content, label, { pixels = 6, margin = 4 } = {}) {
  const qr = qrcode(0, 'M');
  qr.addData(content, 'Byte');
  qr.make();
  const count = qr.getModuleCount();
  const size = (count + margin * 2) * pixels;
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = size;
  canvas.className = 'qr-code';
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-label', label);
  canvas.dataset.content = content;
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, size, size);
  ctx.fillStyle = '#000';
  for (let r = 0; r < count; r += 1) {
    for (let c = 0; c < count; c += 1) {
      if (qr.isDark(r, c)) ctx.fillRect((c + margin) * pixels, (r + margin) * pixels, pixels, pixels);
    }
  }
  return canvas;
}
