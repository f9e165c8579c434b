// Indonesian first, English on request; every visible text and accessible name comes from here.

const TEXT = {
  id: {
    skip: 'Langsung ke isi',
    switch_lang: 'English',
    nav_buy: 'Beli', nav_stamps: 'Meterai saya', nav_stamp: 'Bubuhkan', nav_history: 'Riwayat',
    nav_verify: 'Verifikasi', nav_signin: 'Masuk', nav_signout: 'Keluar',
    signin_title: 'Masuk', phone: 'Nomor HP', send_code: 'Kirim kode',
    code_sent: 'Kode 6 angka dikirim lewat SMS ke {phone}. Berlaku {minutes} menit.',
    code: 'Kode dari SMS', signin: 'Masuk', other_phone: 'Ganti nomor',
    invalid_phone: 'Tulis nomor HP, misalnya 081234567890.',
    invalid_code: 'Kode salah atau sudah tidak berlaku. Minta kode baru bila perlu.',
    buy_title: 'Beli e-meterai', quantity: 'Jumlah meterai', duty: 'Bea meterai (Rp 10.000 × {n})',
    fee: 'Biaya layanan', total: 'Total', pay_with: 'Cara bayar', va: 'Virtual account bank',
    qris: 'QRIS (aplikasi bank atau e-wallet apa pun)', buy: 'Beli sekarang',
    qris_scan: 'Pindai kode QRIS ini dengan aplikasi bank atau e-wallet apa pun.', qris_code: 'Kode QRIS untuk membayar',
    pay_title: 'Bayar', va_no: 'Nomor virtual account', bank: 'Bank', amount: 'Jumlah',
    copy: 'Salin nomor', copied: 'Nomor disalin.', expires_in: 'Bayar sebelum {time} (sisa {left})',
    expired: 'Waktu pembayaran habis.', waiting_bill: 'Menyiapkan nomor virtual account…',
    waiting_qr: 'Menyiapkan kode QRIS… Bila penyedia QRIS sedang tidak menjawab, kode dibuat begitu ia kembali; '
      + 'bila tidak sempat, pesanan kedaluwarsa tanpa ada uang yang diambil.',
    qris_unavailable: 'QRIS sedang tidak tersedia. Silakan bayar dengan virtual account bank (sudah dipilih), '
      + 'atau coba QRIS lagi setelah {time}.',
    qris_off_short: 'QRIS sedang tidak tersedia sampai {time}.',
    dev_pay: 'Simulasi: bayar dari bank pengembangan', dev_note: 'Hanya di lingkungan pengembangan.',
    status: 'Status', status_AWAITING_PAYMENT: 'Menunggu pembayaran', status_PAID: 'Dibayar, meterai disiapkan',
    status_FULFILLED: 'Selesai: meterai siap dipakai', status_EXPIRED: 'Kedaluwarsa',
    status_REFUND_PENDING: 'Dana sedang dikembalikan', status_REFUNDED: 'Dana dikembalikan', status_FAILED: 'Gagal',
    to_stamps: 'Lihat meterai saya',
    stamps_title: 'Meterai saya', available: 'Tersedia', used: 'Terpakai', serials: 'Nomor seri tersedia',
    none: 'Belum ada.',
    stamp_title: 'Bubuhkan meterai', choose_pdf: 'Pilih dokumen PDF', page: 'Halaman',
    place_hint: 'Klik atau seret pada pratinjau untuk menaruh meterai.', preview: 'Pratinjau halaman {page}',
    position: 'Posisi meterai: x {x}, y {y} (poin dari kiri bawah)', reason: 'Alasan (opsional)',
    password: 'Kata sandi PDF (bila ada)', submit_stamp: 'Bubuhkan meterai', no_quota: 'Meterai Anda habis. Beli dulu.',
    refused: 'Dokumen ditolak: {message} Tidak ada meterai yang terpakai.',
    progress_title: 'Proses pembubuhan', st_QUEUED: 'Dalam antrean', st_STAMPING: 'Sedang dibubuhkan',
    st_DONE: 'Selesai', st_FAILED: 'Gagal', queue: 'Posisi antrean {position}, perkiraan {eta} detik',
    download: 'Unduh dokumen', serial: 'Nomor seri',
    history_title: 'Riwayat', orders: 'Pembelian', stampings: 'Pembubuhan', receipt: 'Kuitansi',
    refund: 'Kembalikan dana meterai yang belum dipakai', refund_asked: 'Pengembalian dana diminta.',
    nothing_to_refund: 'Tidak ada meterai yang bisa dikembalikan.', more: 'Muat lagi', document: 'Dokumen',
    verify_title: 'Verifikasi dokumen', verify_file: 'Pilih PDF yang bermeterai', verify: 'Periksa',
    valid: 'Dokumen sah: semua meterai utuh dan terdaftar.', invalid: 'Dokumen TIDAK sah.',
    intact: 'utuh', not_intact: 'tidak utuh', signed_at: 'Waktu',
    waiting_title: 'Antrean penuh',
    waiting_text: 'Banyak pemohon sedang dilayani. Permintaan Anda belum diproses dan tidak ada biaya. Kami coba lagi otomatis pada {at}.',
    waiting_count: 'Mencoba lagi dalam {s} detik',
    error: 'Terjadi kesalahan: {message}', offline: 'Koneksi terputus. Mencoba lagi…', loading: 'Memuat…',
    session_ended: 'Sesi berakhir. Silakan masuk lagi.',
  },
  en: {
    skip: 'Skip to content',
    switch_lang: 'Bahasa Indonesia',
    nav_buy: 'Buy', nav_stamps: 'My stamps', nav_stamp: 'Stamp', nav_history: 'History',
    nav_verify: 'Verify', nav_signin: 'Sign in', nav_signout: 'Sign out',
    signin_title: 'Sign in', phone: 'Mobile number', send_code: 'Send code',
    code_sent: 'A 6-digit code was texted to {phone}. Valid for {minutes} minutes.',
    code: 'Code from the text', signin: 'Sign in', other_phone: 'Use another number',
    invalid_phone: 'Enter a mobile number, for example 081234567890.',
    invalid_code: 'Wrong or expired code. Ask for a new one if needed.',
    buy_title: 'Buy e-meterai', quantity: 'Number of stamps', duty: 'Stamp duty (Rp 10,000 × {n})',
    fee: 'Service fee', total: 'Total', pay_with: 'Pay with', va: 'Bank virtual account',
    qris: 'QRIS (any bank app or e-wallet)', buy: 'Buy now',
    qris_scan: 'Scan this QRIS code with any bank app or e-wallet.', qris_code: 'QRIS code to pay',
    pay_title: 'Pay', va_no: 'Virtual account number', bank: 'Bank', amount: 'Amount',
    copy: 'Copy number', copied: 'Number copied.', expires_in: 'Pay before {time} ({left} left)',
    expired: 'The time to pay is over.', waiting_bill: 'Preparing the virtual account number…',
    waiting_qr: 'Preparing the QRIS code… If the QRIS provider is not answering, the code is made as soon as it is '
      + 'back; if it does not come in time, the order expires and no money is taken.',
    qris_unavailable: 'QRIS is unavailable right now. Please pay by bank virtual account (now selected), '
      + 'or try QRIS again after {time}.',
    qris_off_short: 'QRIS is unavailable until {time}.',
    dev_pay: 'Simulation: pay from the development bank', dev_note: 'Development only.',
    status: 'Status', status_AWAITING_PAYMENT: 'Awaiting payment', status_PAID: 'Paid, stamps being prepared',
    status_FULFILLED: 'Done: stamps ready to use', status_EXPIRED: 'Expired',
    status_REFUND_PENDING: 'Refund in progress', status_REFUNDED: 'Refunded', status_FAILED: 'Failed',
    to_stamps: 'See my stamps',
    stamps_title: 'My stamps', available: 'Available', used: 'Used', serials: 'Available serial numbers',
    none: 'None yet.',
    stamp_title: 'Stamp a document', choose_pdf: 'Choose a PDF document', page: 'Page',
    place_hint: 'Click or drag on the preview to place the stamp.', preview: 'Preview of page {page}',
    position: 'Stamp position: x {x}, y {y} (points from the bottom left)', reason: 'Reason (optional)',
    password: 'PDF password (if any)', submit_stamp: 'Stamp it', no_quota: 'You have no stamps left. Buy some first.',
    refused: 'Document refused: {message} No stamp was used.',
    progress_title: 'Stamping progress', st_QUEUED: 'Queued', st_STAMPING: 'Stamping',
    st_DONE: 'Done', st_FAILED: 'Failed', queue: 'Queue position {position}, about {eta} seconds',
    download: 'Download document', serial: 'Serial number',
    history_title: 'History', orders: 'Purchases', stampings: 'Stampings', receipt: 'Receipt',
    refund: 'Refund unused stamps', refund_asked: 'Refund requested.',
    nothing_to_refund: 'There is nothing to refund.', more: 'Load more', document: 'Document',
    verify_title: 'Verify a document', verify_file: 'Choose a stamped PDF', verify: 'Check',
    valid: 'Valid document: every stamp is intact and registered.', invalid: 'The document is NOT valid.',
    intact: 'intact', not_intact: 'not intact', signed_at: 'Time',
    waiting_title: 'We are at capacity',
    waiting_text: 'Many applicants are being served. Your request has not been taken and nothing was charged. We will try again by ourselves at {at}.',
    waiting_count: 'Trying again in {s} seconds',
    error: 'Something went wrong: {message}', offline: 'Connection lost. Retrying…', loading: 'Loading…',
    session_ended: 'Your session ended. Please sign in again.',
  },
};

let lang = localStorage.getItem('lang') === 'en' ? 'en' : 'id';

export function language() { return lang; }

export function setLanguage(next) {
  lang = next === 'en' ? 'en' : 'id';
  localStorage.setItem('lang', lang);
  document.documentElement.lang = lang;
}

export function t(key, values = {}) {
  const text = TEXT[lang][key] ?? TEXT.id[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ''));
}

export function rupiah(amount) {
  return 'Rp ' + new Intl.NumberFormat(lang === 'en' ? 'en-US' : 'id-ID').format(amount);
}

export function when(iso) {
  return new Intl.DateTimeFormat(lang === 'en' ? 'en-GB' : 'id-ID', {
    dateStyle: 'medium', timeStyle: 'short', timeZone: 'Asia/Jakarta',
  }).format(new Date(iso)) + ' WIB';
}
