document.body.textContent = "chatd";
