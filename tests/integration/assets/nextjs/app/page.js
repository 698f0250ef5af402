export default function Page() {
  return (
    <main style={{ padding: "48px" }}>
      <h1 style={{ fontSize: "64px" }}>Next.js through the gateway</h1>
      <p id="marker">first version</p>
    </main>
  );
}
