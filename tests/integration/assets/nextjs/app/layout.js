export const metadata = { title: "qai-jobs gateway test" };

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body style={{ background: "#1d3557", color: "#f1faee", fontFamily: "sans-serif" }}>
        {children}
      </body>
    </html>
  );
}
