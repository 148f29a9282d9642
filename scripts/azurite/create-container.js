// Creates a blob container in Azurite (the emulator's well-known account and key).
// Usage: node create-container.js http://127.0.0.1:PORT CONTAINER
const { BlobServiceClient, StorageSharedKeyCredential } = require("@azure/storage-blob");
const [url, container] = process.argv.slice(2);
const credential = new StorageSharedKeyCredential(
  "devstoreaccount1",
  "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
);
new BlobServiceClient(`${url}/devstoreaccount1`, credential)
  .getContainerClient(container)
  .create()
  .then(() => console.log(`azurite: container ${container} created`))
  .catch((e) => {
    console.error(`azurite: cannot create container ${container}: ${e.message}`);
    process.exit(1);
  });
